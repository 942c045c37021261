// Package brokertest runs a real broker and its control API inside a test's
// process, as tokend does, for tests of the broker's clients (the nix hook,
// tokenctl), the way net/http/httptest serves net/http's.
package brokertest

import (
	"context"
	"os"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker"
)

// Start runs a broker with a fixed budget in a new runtime directory and
// serves its API there until t ends, then checks that the broker stopped
// cleanly and never found its accounting broken. It returns the socket.
func Start(t testing.TB, budget int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "brokertest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := broker.New(broker.Options{RuntimeDir: dir, Budget: budget})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	srv, err := broker.NewServer(b, "", hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	socket := api.SocketPath(dir)
	ln, err := broker.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker stopped with %v", err)
		}
		if st := b.Status(); st.InvariantViolations != 0 {
			t.Errorf("broker found %d accounting errors, last: %s", st.InvariantViolations, st.LastViolation)
		}
	})
	return socket
}
