package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serve answers on a unix socket with net/http's server, as tokend does.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "tokend.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket
}

func TestClientAgainstNetHTTP(t *testing.T) {
	// More leases than fit net/http's buffer, so the answer is not sent
	// in one piece: for HTTP/1.0 the server ends it by closing.
	var big Status
	for range 500 {
		big.Leases = append(big.Leases, LeaseStatus{Registration: Registration{ID: "0123456789ab", Name: strings.Repeat("n", 100)}})
	}
	socket := serve(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "GET" && r.URL.Path == PathStatus && r.Proto == "HTTP/1.0":
			json.NewEncoder(w).Encode(big)
		case r.Method == "POST" && r.URL.Path == PathLeases:
			var req RegisterRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.Header.Get("Content-Type") != "application/json" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(Registered{ID: "a1", Name: req.Name, FIFO: "/run/tokend/leases/a1.fifo"})
		case r.Method == "DELETE":
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(Error{Error: "no such lease"})
		default:
			http.Error(w, r.Method+" "+r.URL.Path+" "+r.Proto, http.StatusTeapot)
		}
	})
	c := NewClient(socket)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || len(st.Leases) != len(big.Leases) || st.Leases[499].Name != big.Leases[499].Name {
		t.Fatalf("status: %d leases, %v; want %d", len(st.Leases), err, len(big.Leases))
	}
	reg, err := c.Register(ctx, RegisterRequest{Name: "hello"})
	if err != nil || reg != (Registered{ID: "a1", Name: "hello", FIFO: "/run/tokend/leases/a1.fifo"}) {
		t.Fatalf("register: %+v, %v", reg, err)
	}
	err = c.End(ctx, "a1")
	if err == nil || !strings.Contains(err.Error(), "404 Not Found") || !strings.Contains(err.Error(), "no such lease") {
		t.Fatalf("end: %v, want tokend's 404 and its reason", err)
	}
	if _, err := c.SetBudget(ctx, 3); err == nil || !strings.Contains(err.Error(), "418") {
		t.Fatalf("set budget: %v, want the server's 418", err)
	}
}

// A call ends when its context does, whether tokend answers or not.
func TestClientIsBoundedByItsContext(t *testing.T) {
	socket := serve(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	c := NewClient(socket)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Status(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("status past its deadline: %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := c.Status(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("status cancelled: %v, want Canceled", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("two calls of 100ms took %v", took)
	}
}

func TestClientUnreachable(t *testing.T) {
	dir := t.TempDir()
	_, err := NewClient(filepath.Join(dir, "none.sock")).Status(context.Background())
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("no socket: %v, want ErrUnreachable and ENOENT", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := NewClient(stale).Status(context.Background()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("stale socket: %v, want ECONNREFUSED", err)
	}
	// Nothing that is not a socket answers either.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := NewClient(file).Status(context.Background()); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("a plain file: %v, want ErrUnreachable", err)
	}
}

func TestParseAnswer(t *testing.T) {
	for raw, want := range map[string]string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}":                            "",
		"HTTP/1.0 204 No Content\r\n\r\n":                                           "",
		"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}":                            "Content-Length 9",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n": "Transfer-Encoding",
		"HTTP/1.1 200 OK\r\nContent-Type: application/json":                         "cut short",
		"SSH-2.0-OpenSSH_9.2\r\n\r\n":                                               "not an HTTP answer",
		"HTTP/1.1 abc\r\n\r\n":                                                      "not an HTTP answer",
		"":                                                                          "cut short",
	} {
		_, body, err := parseAnswer([]byte(raw))
		switch {
		case want == "" && err != nil:
			t.Errorf("%q: %v", raw, err)
		case want == "" && string(body) != raw[strings.Index(raw, "\r\n\r\n")+4:]:
			t.Errorf("%q: body %q", raw, body)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: %v, want an error saying %q", raw, err, want)
		}
	}
}

// The server decodes the segment with net/http's own unescaping; whatever a
// name holds must come back whole, and one name must stay one segment.
func TestEscapeSegmentRoundTrips(t *testing.T) {
	for _, name := range []string{"hello", "gcc-13.2.0", "a/b", "a b%c", "?x=1#y", "naïve", "\x00\x7f"} {
		got := escapeSegment(name)
		if strings.Contains(got, "/") {
			t.Errorf("escapeSegment(%q) = %q: holds a slash", name, got)
		}
		back, err := url.PathUnescape(got)
		if err != nil || back != name {
			t.Errorf("escapeSegment(%q) = %q, unescapes to %q (%v)", name, got, back, err)
		}
	}
}
