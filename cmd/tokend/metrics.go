package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// serveMetrics serves GET /metrics, and nothing else, on the TCP address
// metrics_listen names, for a Prometheus that cannot reach the control
// socket. A failure to listen stops tokend at start; a failure later is
// logged and the broker goes on without it.
func serveMetrics(addr string, metrics http.Handler, log hclog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen %s: %w; choose a free address, or \"\" for none", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 2 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped; metrics stay on the control socket", "address", ln.Addr().String(), "error", err)
		}
	}()
	log.Info("serving metrics", "address", ln.Addr().String(), "path", "/metrics")
	return srv, nil
}
