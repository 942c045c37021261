package nixhook

import (
	"context"
	"encoding/json"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/broker/brokertest"
	"github.com/tokend/tokend/internal/buildtest"

	"github.com/tokend/tokend/api"
)

const drvFixture = "4d4i2ijz9w4hfzhfzbzjdd567slr6zdd-tokend-e2e-1.drv"

// socketDir is a short directory for a unix socket (at most 108 bytes of
// path), removed after the test.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nixhook-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startTokend runs a broker and its API, as tokend does, and returns the
// socket and a client.
func startTokend(t *testing.T, budget int) (string, *api.Client) {
	t.Helper()
	buildtest.Require(t, os.Geteuid() == 0, "root: the hook registers leases for a build's group")
	socket := brokertest.Start(t, budget)
	return socket, api.NewClient(socket)
}

// build lays out what Nix hands the hook: a .drv (the fixture) and a
// sandbox directory of the given group, mode 0750 as Nix makes it.
func build(t *testing.T, gid int) (drv, sandbox string) {
	t.Helper()
	dir := t.TempDir()
	drv = filepath.Join(dir, drvFixture)
	if err := os.WriteFile(drv, fixture(t, drvFixture), 0o444); err != nil {
		t.Fatal(err)
	}
	sandbox = drv + ".chroot"
	if err := os.Mkdir(sandbox, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sandbox, -1, gid); err != nil {
		t.Fatal(err)
	}
	return drv, sandbox
}

func status(t *testing.T, c *api.Client) api.Status {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestCommandFormat(t *testing.T) {
	got := Command(api.Registered{FIFO: "/run/tokend/leases/0123456789ab.fifo", Gate: "/run/tokend/leases/0123456789ab.gate"})
	want := "extra-sandbox-paths\n/run/tokend/jobserver.fifo=/run/tokend/leases/0123456789ab.fifo\n/run/tokend/admission=/run/tokend/leases/0123456789ab.gate\n\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// A tokend that gives no gate admits the build at once: only the FIFO.
	got = Command(api.Registered{FIFO: "/run/tokend/leases/0123456789ab.fifo"})
	want = "extra-sandbox-paths\n/run/tokend/jobserver.fifo=/run/tokend/leases/0123456789ab.fifo\n\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestRunMapsTheLeaseFIFO(t *testing.T) {
	socket, c := startTokend(t, 4)
	const gid = 30123 // a build's own group, as auto-allocate-uids gives
	drv, sandbox := build(t, gid)

	r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
	if r.Problem != "" {
		t.Fatalf("problem: %s", r.Problem)
	}
	want := "extra-sandbox-paths\n/run/tokend/jobserver.fifo=" + r.Lease.FIFO + "\n/run/tokend/admission=" + r.Lease.Gate + "\n\n"
	if r.Stdout != want || r.Lease.FIFO == "" || r.Lease.Gate == "" {
		t.Fatalf("stdout %q, want %q", r.Stdout, want)
	}
	gst, err := os.Stat(r.Lease.Gate)
	if err != nil {
		t.Fatal(err)
	}
	if gst.Mode() != 0o640 || gst.Sys().(*syscall.Stat_t).Gid != gid {
		t.Fatalf("gate is %v of group %d, want a 0640 file of group %d", gst.Mode(), gst.Sys().(*syscall.Stat_t).Gid, gid)
	}
	st, err := os.Stat(r.Lease.FIFO)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != fs.ModeNamedPipe|0o660 || st.Sys().(*syscall.Stat_t).Gid != gid {
		t.Fatalf("fifo is %v of group %d, want a 0660 fifo of group %d", st.Mode(), st.Sys().(*syscall.Stat_t).Gid, gid)
	}
	leases := status(t, c).Leases
	if len(leases) != 1 {
		t.Fatalf("leases %+v, want one", leases)
	}
	l := leases[0]
	// Nothing in the sandbox opened the FIFO or asked yet: no slot held.
	if l.ID != r.Lease.ID || l.Name != "tokend-e2e" || strings.Join(l.Features, ",") != "big-parallel" ||
		l.Owner.Dir != sandbox || l.Admitted || l.State != api.StateNotJoined {
		t.Fatalf("lease %+v, want tokend-e2e [big-parallel] owned by %s, not joined yet", l, sandbox)
	}
	// Reading the gate, as the setup hook does, asks for a slot; with room
	// in the budget tokend admits the build and opens the gate, perhaps
	// before this very read gets to the line.
	if line, err := os.ReadFile(r.Lease.Gate); err != nil || !(strings.HasPrefix(string(line), "wait ") || strings.HasPrefix(string(line), "go ")) {
		t.Fatalf("gate says %q (%v), want a wait or go line", line, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		line, err := os.ReadFile(r.Lease.Gate)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(string(line), "go ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gate still says %q; lease %+v", line, status(t, c).Leases)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if l := status(t, c).Leases[0]; !l.Admitted || l.State != api.StateRunning || l.Asked.IsZero() {
		t.Fatalf("lease %+v, want admitted and running, with the time it asked", l)
	}

	// Nix removes the sandbox when the build ends; so ends the lease.
	if err := os.Remove(sandbox); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(status(t, c).Leases) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("lease still there after its sandbox went: %+v", status(t, c).Leases)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunAbsentDerivationNamesTheLeaseFromItsPath(t *testing.T) {
	socket, c := startTokend(t, 4)
	sandbox := t.TempDir()
	r := Run(context.Background(), Options{Socket: socket}, "/nix/store/cv0yyj3disvcmhc3f2jddvlhi7wwn6ln-remote-3.1.drv", sandbox)
	if r.Problem != "" || r.Stdout != Command(r.Lease) {
		t.Fatalf("got %+v", r)
	}
	if l := status(t, c).Leases; len(l) != 1 || l[0].Name != "remote-3.1" || l[0].Features != nil {
		t.Fatalf("leases %+v, want one named remote-3.1", l)
	}
}

func TestRunBadDerivationRegistersNothing(t *testing.T) {
	socket, c := startTokend(t, 4)
	drv, sandbox := build(t, 0)
	os.Chmod(drv, 0o644)
	os.WriteFile(drv, []byte(`Derive([("out",`), 0o644)
	r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
	if r.Stdout != "" || !strings.Contains(r.Problem, drv) {
		t.Fatalf("got %+v, want no output and a problem naming %s", r, drv)
	}
	if l := status(t, c).Leases; len(l) != 0 {
		t.Fatalf("leases %+v, want none", l)
	}
}

func TestRunBadSandboxDirectory(t *testing.T) {
	socket, c := startTokend(t, 4)
	drv, sandbox := build(t, 0)
	for _, dir := range []string{sandbox + "-gone", "relative.chroot"} {
		r := Run(context.Background(), Options{Socket: socket}, drv, dir)
		if r.Stdout != "" || r.Problem == "" {
			t.Errorf("sandbox %s: got %+v, want no output and a problem", dir, r)
		}
	}
	if l := status(t, c).Leases; len(l) != 0 {
		t.Fatalf("leases %+v, want none", l)
	}
}

func TestRunTokendNotRunningIsSilent(t *testing.T) {
	drv, sandbox := build(t, 0)
	for _, socket := range []string{
		filepath.Join(socketDir(t), "tokend.sock"),         // no socket
		filepath.Join(socketDir(t), "gone", "tokend.sock"), // no runtime directory
	} {
		if r := Run(context.Background(), Options{Socket: socket}, drv, sandbox); r != (Result{}) {
			t.Errorf("%s: got %+v, want nothing at all", socket, r)
		}
	}
}

func TestRunStaleSocket(t *testing.T) {
	drv, sandbox := build(t, 0)
	socket := filepath.Join(socketDir(t), "tokend.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	// What a tokend killed with SIGKILL leaves behind.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
	if r.Stdout != "" || !strings.Contains(r.Problem, "nothing answers") || !strings.Contains(r.Problem, socket) {
		t.Fatalf("got %+v, want no output and a problem about the socket", r)
	}
}

func TestRunBacklogFull(t *testing.T) {
	drv, sandbox := build(t, 0)
	socket := filepath.Join(socketDir(t), "tokend.sock")
	// A tokend that stopped accepting: a listening socket nobody accepts
	// on, its backlog filled.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: socket}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		c, err := net.Dial("unix", socket)
		if err != nil {
			break
		}
		defer c.Close()
	}
	r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
	if r.Stdout != "" || !strings.Contains(r.Problem, "accepts no connections") {
		t.Fatalf("got %+v, want no output and a backlog problem", r)
	}
}

func TestRunSocketWithoutPermission(t *testing.T) {
	if buildtest.RerunAsNobody(t) {
		return // root may connect to any socket
	}
	drv, sandbox := build(t, os.Getegid())
	socket := filepath.Join(socketDir(t), "tokend.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(socket, 0)
	r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
	if r.Stdout != "" || !strings.Contains(r.Problem, "permission denied") {
		t.Fatalf("got %+v, want no output and a permission problem", r)
	}
}

// fakeTokend answers the control API with handler, recording requests.
type fakeTokend struct {
	mu       sync.Mutex
	requests []string
}

func (f *fakeTokend) serve(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	socket := filepath.Join(socketDir(t), "tokend.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		handler(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket
}

func (f *fakeTokend) seen() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.requests, ", ")
}

func TestRunRefused(t *testing.T) {
	drv, sandbox := build(t, os.Getegid())
	var f fakeTokend
	socket := f.serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(map[string]string{"error": "uid 0 may not register leases"})
	})
	r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
	if r.Stdout != "" || !strings.Contains(r.Problem, "uid 0 may not register leases") || strings.Contains(r.Problem, "\n") {
		t.Fatalf("got %+v, want no output and one line with tokend's reason", r)
	}
}

func TestRunConfusedAnswers(t *testing.T) {
	drv, sandbox := build(t, os.Getegid())
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	for name, answer := range map[string]string{
		"not json":           `{"id":`,
		"no fifo":            `{"id":"a1","name":"x","fifo":""}`,
		"relative fifo":      `{"id":"a1","name":"x","fifo":"leases/a1.fifo"}`,
		"fifo not here":      `{"id":"a1","name":"x","fifo":"` + dir + `/gone.fifo"}`,
		"fifo a plain file":  `{"id":"a1","name":"x","fifo":"` + file + `"}`,
		"line break in path": `{"id":"a1","name":"x","fifo":"` + dir + `/a\n/run/x=/etc"}`,
	} {
		t.Run(name, func(t *testing.T) {
			var f fakeTokend
			socket := f.serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodDelete {
					w.WriteHeader(http.StatusNoContent)
					return
				}
				w.WriteHeader(http.StatusCreated)
				w.Write([]byte(answer))
			})
			r := Run(context.Background(), Options{Socket: socket}, drv, sandbox)
			if r.Stdout != "" || r.Problem == "" || strings.Contains(r.Problem, "\n") {
				t.Fatalf("got %+v, want no output and a one-line problem", r)
			}
			// A lease the hook cannot use is handed back at once.
			if name != "not json" && f.seen() != "POST /v1/leases, DELETE /v1/leases/a1" {
				t.Fatalf("requests: %s", f.seen())
			}
		})
	}
}

func TestRunSlowTokendIsBounded(t *testing.T) {
	drv, sandbox := build(t, os.Getegid())
	var f fakeTokend
	socket := f.serve(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers; the client gives up
	})
	start := time.Now()
	r := Run(context.Background(), Options{Socket: socket, Timeout: 200 * time.Millisecond}, drv, sandbox)
	if r.Stdout != "" || !strings.Contains(r.Problem, "did not answer within 200ms") {
		t.Fatalf("got %+v, want no output and a timeout problem", r)
	}
	// Bounded, not measured: far above the timeout, far below forever.
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %v with a 200ms timeout", took)
	}
}

// With use-cgroups, Nix records the build's cgroup under its state
// directory by the build's uid (its gid with auto-allocate-uids) before the
// hook runs; the hook registers the lease with it so the brake can freeze
// that group.
func TestRunRegistersNixsCgroupOfTheBuild(t *testing.T) {
	socket, c := startTokend(t, 4)
	const gid = 872415232 // auto-allocate-uids' first build id
	_, sandbox := build(t, gid)
	state := t.TempDir()
	cgroups := filepath.Join(state, "cgroups")
	if err := os.MkdirAll(cgroups, 0o755); err != nil {
		t.Fatal(err)
	}
	const cg = "/sys/fs/cgroup/unified/nix-build-uid-872415232" // as Nix 2.34 wrote it here
	if err := os.WriteFile(filepath.Join(cgroups, strconv.Itoa(gid)), []byte(cg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := Run(context.Background(), Options{Socket: socket, NixStateDir: state}, "/nix/store/4d4i2ijz9w4hfzhfzbzjdd567slr6zdd-tokend-e2e-1.drv", sandbox)
	if r.Problem != "" {
		t.Fatalf("problem: %s", r.Problem)
	}
	if l := status(t, c).Leases; len(l) != 1 || l[0].Cgroup != cg {
		t.Fatalf("leases %+v, want one in cgroup %s", l, cg)
	}
	// Another build's record is not this one's.
	if got := buildCgroup(state, gid+65536); got != "" {
		t.Fatalf("cgroup of another uid: %q, want none", got)
	}
}
