package nixhook

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/buildtest"
)

// The hook's bound covers reading the derivation too: a .drv that never
// finishes reading (here a FIFO nobody writes, as a hung disk or NFS
// mount behaves) made the hook, and with it the nix worker, wait forever.
// The problem names the step that ran out of time.
func TestRunBoundsReadingTheDerivation(t *testing.T) {
	_, sandbox := build(t, os.Getegid())
	drv := filepath.Join(t.TempDir(), drvFixture)
	if err := syscall.Mkfifo(drv, 0o600); err != nil {
		t.Fatal(err)
	}
	var f fakeTokend
	socket := f.serve(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	done := make(chan Result, 1)
	go func() {
		done <- Run(context.Background(), Options{Socket: socket, Timeout: 200 * time.Millisecond}, drv, sandbox)
	}()
	select {
	case r := <-done:
		if r.Stdout != "" || !strings.Contains(r.Problem, "reading the derivation") || !strings.Contains(r.Problem, "200ms") {
			t.Fatalf("got %+v, want no output and a problem naming the derivation's reading", r)
		}
		if f.seen() != "" {
			t.Errorf("the hook went on to tokend: %s", f.seen())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hook waits for ever on a derivation that cannot be read")
	}
}

// A .drv over the size cap is refused before it is parsed: a 60 MB one
// took 2 s and 191 MB.
func TestRunRefusesHugeDerivations(t *testing.T) {
	_, sandbox := build(t, os.Getegid())
	drv := filepath.Join(t.TempDir(), drvFixture)
	body := `Derive([],[],[],"","",[],[("name","huge"),("blob","` + strings.Repeat("x", maxDrvSize) + `")])`
	if err := os.WriteFile(drv, []byte(body), 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := Describe(drv, sandbox); err == nil || !strings.Contains(err.Error(), "larger than 8388608 bytes") {
		t.Fatalf("a %d-byte derivation: %v; want refused over the 8 MiB cap", len(body), err)
	}
}

// Whatever answers on the socket must not get a file of its choosing
// mounted into a build: only a FIFO (and gate) directly in tokend's
// leases directory, owned by root, is mapped.
func TestRunMapsOnlyTokendsOwnFIFOs(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to give a fifo to another user")
	drv, sandbox := build(t, os.Getegid())
	elsewhere := filepath.Join(t.TempDir(), "0123456789ab.fifo")
	if err := syscall.Mkfifo(elsewhere, 0o600); err != nil {
		t.Fatal(err)
	}
	var f fakeTokend
	var answer string
	socket := f.serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(answer))
	})
	leases := filepath.Join(filepath.Dir(socket), "leases")
	if err := os.Mkdir(leases, 0o755); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(leases, "0123456789ab.fifo")
	if err := syscall.Mkfifo(users, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(users, buildtest.Nobody, buildtest.Nobody); err != nil {
		t.Fatal(err)
	}
	ours := filepath.Join(leases, "0123456789ac.fifo")
	if err := syscall.Mkfifo(ours, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ fifo, want string }{
		{elsewhere, "not in tokend's leases directory"},
		{leases + "/../leases/0123456789ac.fifo", "unusable path"},
		{users, "owned by uid 65534"},
	} {
		answer = `{"id":"a1","name":"x","fifo":"` + tc.fifo + `"}`
		r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
		if r.Stdout != "" || !strings.Contains(r.Problem, tc.want) {
			t.Errorf("tokend answering %s: %+v; want no output and a problem mentioning %q", tc.fifo, r, tc.want)
		}
	}
	answer = `{"id":"a1","name":"x","fifo":"` + ours + `"}`
	if r := Run(context.Background(), Options{Socket: socket}, drv, sandbox); !strings.Contains(r.Stdout, "="+ours+"\n") {
		t.Errorf("tokend's own fifo was not mapped: %+v", r)
	}
}
