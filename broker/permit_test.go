package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
)

// apiCall is one raw request a child client sends; "$SELF" in its body or
// path stands for the child's own pid.
type apiCall struct {
	Method, Path, Body string
}

// apiAnswer is what the child got back.
type apiAnswer struct {
	Code int
	Body string
}

// sendRequests is the child side of asNobody: it sends the calls in
// TOKEND_REQUESTS to TOKEND_SOCKET and prints the answers as JSON.
func sendRequests() {
	var calls []apiCall
	if err := json.Unmarshal([]byte(os.Getenv("TOKEND_REQUESTS")), &calls); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	socket := os.Getenv("TOKEND_SOCKET")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	self := strconv.Itoa(os.Getpid())
	var out []apiAnswer
	for _, c := range calls {
		req, err := http.NewRequest(c.Method, "http://tokend"+strings.ReplaceAll(c.Path, "$SELF", self), strings.NewReader(strings.ReplaceAll(c.Body, "$SELF", self)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		resp, err := hc.Do(req)
		if err != nil {
			out = append(out, apiAnswer{Code: -1, Body: err.Error()})
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, apiAnswer{Code: resp.StatusCode, Body: string(bytes.TrimSpace(body))})
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// asNobody sends calls to the API on socket from a process of uid and gid
// 65534 (a member of the lease group "nogroup" when the server has it)
// and returns the answers: the daemon is root, the client is not, as on a
// real host.
func asNobody(t *testing.T, socket string, calls ...apiCall) []apiAnswer {
	t.Helper()
	return asUser(t, socket, &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}, calls...)
}

// asUser is asNobody with the given credentials.
func asUser(t *testing.T, socket string, cred *syscall.Credential, calls ...apiCall) []apiAnswer {
	t.Helper()
	buildtest.Require(t, os.Geteuid() == 0, "root, to run a client as another uid")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The test binary lives in a directory only root may enter.
	bin := filepath.Join(filepath.Dir(socket), "broker.test")
	if _, err := os.Stat(bin); err != nil {
		raw, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, raw, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := json.Marshal(calls)
	if err != nil {
		t.Fatal(err)
	}
	child := exec.CommandContext(ctx, bin, "-test.run=^$")
	child.Env = append(os.Environ(), "TOKEND_BROKER_TEST_CHILD=requests", "TOKEND_SOCKET="+socket, "TOKEND_REQUESTS="+string(raw))
	child.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	child.Dir = "/"
	child.Stderr = os.Stderr
	out, err := child.Output()
	if err != nil {
		t.Fatalf("client as uid %d gid %d: %v", cred.Uid, cred.Gid, err)
	}
	var answers []apiAnswer
	if err := json.Unmarshal(out, &answers); err != nil || len(answers) != len(calls) {
		t.Fatalf("client output %q: %v", out, err)
	}
	for i, a := range answers {
		t.Logf("uid %d: %s %s %s -> %d %s", cred.Uid, calls[i].Method, calls[i].Path, calls[i].Body, a.Code, a.Body)
	}
	return answers
}

func register(body string) apiCall { return apiCall{"POST", api.PathLeases, body} }

// expect checks an answer's status and that its body mentions want.
func expect(t *testing.T, what string, a apiAnswer, code int, want string) {
	t.Helper()
	if a.Code != code || !strings.Contains(a.Body, want) {
		t.Errorf("%s: %d %s; want %d mentioning %q", what, a.Code, a.Body, code, want)
	}
}

// A member of the lease group owns a lease only by a process of its own:
// another user's process (which tokend would move into the member's lease
// cgroup), tokend itself or PID 1 (a lease that never ends), a directory
// (sampling every process under it, and telling which paths exist under
// /root) or a cgroup are refused before tokend looks at them.
func TestMemberOwnsLeasesOnlyByItsOwnProcesses(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	socket := serve(t, b, "nogroup")
	rootProc := exec.Command("sleep", "60")
	if err := rootProc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { rootProc.Process.Kill(); rootProc.Wait() }()
	pid := rootProc.Process.Pid
	answers := asNobody(t, socket,
		register(fmt.Sprintf(`{"name": "theft", "owner_pid": %d, "new_cgroup": true}`, pid)),
		register(fmt.Sprintf(`{"name": "self-move", "owner_pid": %d, "new_cgroup": true}`, os.Getpid())),
		register(`{"name": "init", "owner_pid": 1}`),
		register(`{"name": "everything", "owner_dir": "/"}`),
		register(`{"name": "probe", "owner_dir": "/root/no-such-directory"}`),
		register(`{"name": "probe", "owner_dir": "/root"}`),
		register(`{"name": "group", "owner_pid": $SELF, "cgroup": "/sys/fs/cgroup"}`),
		register(`{"name": "mine", "owner_pid": $SELF, "new_cgroup": true, "wait": true}`),
	)
	expect(t, "another user's process", answers[0], 403, "does not run as uid 65534")
	expect(t, "tokend's own process", answers[1], 403, "is tokend itself")
	expect(t, "PID 1", answers[2], 403, "owner process 1")
	expect(t, `owner_dir "/"`, answers[3], 403, "only root may")
	// The same answer whether the directory exists or not.
	expect(t, "a missing directory under /root", answers[4], 403, "only root may")
	if answers[4].Body != answers[5].Body {
		t.Errorf("owner_dir answers differ with existence: %q vs %q", answers[4].Body, answers[5].Body)
	}
	expect(t, "a named cgroup", answers[6], 403, "only root may")
	expect(t, "its own process", answers[7], 201, `"id"`)
	st := b.Status()
	if len(st.Leases) != 1 || st.Leases[0].Name != "mine" || st.Leases[0].UID != buildtest.Nobody {
		t.Fatalf("leases after the member's requests: %+v; want only its own", st.Leases)
	}
}

// Only a lease's own user or root ends it: a member ending a nix build's
// lease would remove the FIFO before Nix maps it.
func TestMemberEndsOnlyItsOwnLeases(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	socket := serve(t, b, "nogroup")
	roots, err := b.Register(LeaseRequest{Name: "nix-build", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	answers := asNobody(t, socket,
		apiCall{"DELETE", api.PathLeases + "/" + roots.ID, ""},
		register(`{"name": "mine", "owner_pid": $SELF}`),
	)
	expect(t, "ending root's lease", answers[0], 403, "belongs to uid 0")
	if l := leaseByID(b.Status(), roots.ID); l.Name != "nix-build" || l.Ending {
		t.Fatalf("root's lease after a member tried to end it: %+v", l)
	}
	var mine api.Registered
	if err := json.Unmarshal([]byte(answers[1].Body), &mine); err != nil {
		t.Fatal(err)
	}
	answers = asNobody(t, socket, apiCall{"DELETE", api.PathLeases + "/" + mine.ID, ""})
	// The lease's owner (the first child) is gone, so tokend may have
	// ended it already; either way this user may end its own.
	if answers[0].Code != 204 && answers[0].Code != 404 {
		t.Errorf("ending its own lease: %d %s; want 204 (or 404 once tokend saw the owner gone)", answers[0].Code, answers[0].Body)
	}
	if err := b.End(buildtest.Nobody, roots.ID, "test"); err == nil {
		t.Error("Broker.End let uid 65534 end root's lease")
	}
	if err := b.End(0, roots.ID, "test"); err != nil {
		t.Errorf("root ending its lease: %v", err)
	}
}

// One user holds at most LeasesPerUser leases: four leases that never end
// made the allowance 0 for everyone, and no cap meant a state file of
// megabytes rewritten on every change.
func TestLeaseQuotaPerUser(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	socket := serve(t, b, "nogroup")
	calls := make([]apiCall, DefaultLeasesPerUser+1)
	for i := range calls {
		calls[i] = register(fmt.Sprintf(`{"name": "hoard-%d", "owner_pid": $SELF, "wait": true}`, i))
	}
	answers := asNobody(t, socket, calls...)
	for i, a := range answers[:DefaultLeasesPerUser] {
		expect(t, fmt.Sprintf("lease %d", i+1), a, 201, `"id"`)
	}
	expect(t, "one lease over the quota", answers[DefaultLeasesPerUser], 429, fmt.Sprintf("the most one user may hold (%d)", DefaultLeasesPerUser))
	// Root's nix builds are not held to a user's quota.
	for i := range DefaultLeasesPerUser + 1 {
		if _, err := b.Register(LeaseRequest{Name: fmt.Sprintf("root-%d", i), Owner: self(), GID: -1, Wait: true}); err != nil {
			t.Fatalf("root's lease %d: %v", i+1, err)
		}
	}
}

// A tokenctl run lease's FIFO is its user's alone (0600, owned by it): any
// other user of its group read tokens out of it. A nix build's stays
// 0660 root:<build group>, for the build users of that group.
func TestFIFOReachesOnlyItsLeaseUser(t *testing.T) {
	dir := buildtest.WorldDir(t)
	b, err := New(Options{RuntimeDir: dir, Budget: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer cancel()
	socket := serve(t, b, "nogroup")
	owner := exec.Command("sleep", "60")
	owner.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: buildtest.Nobody, Gid: buildtest.Nobody}}
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { owner.Process.Kill(); owner.Wait() }()
	answers := asNobody(t, socket, register(fmt.Sprintf(`{"name": "mine", "owner_pid": %d}`, owner.Process.Pid)))
	expect(t, "register", answers[0], 201, `"fifo"`)
	var reg api.Registered
	if err := json.Unmarshal([]byte(answers[0].Body), &reg); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(reg.FIFO)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o600 || sys.Uid != buildtest.Nobody {
		t.Errorf("the member's fifo is %v owned by uid %d; want 0600 owned by %d", st.Mode().Perm(), sys.Uid, buildtest.Nobody)
	}
	// Another user of the same group, and the lease's own user.
	open := func(uid uint32) error {
		cmd := exec.Command("/bin/sh", "-c", `exec 3<>"$0"`, reg.FIFO)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: buildtest.Nobody}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := open(buildtest.Nobody - 1); err == nil {
		t.Errorf("uid %d of group %d opened uid %d's fifo", buildtest.Nobody-1, buildtest.Nobody, buildtest.Nobody)
	}
	if err := open(buildtest.Nobody); err != nil {
		t.Errorf("the lease's own user cannot open its fifo: %v", err)
	}

	sandbox := t.TempDir()
	nix, err := b.Register(LeaseRequest{Name: "nix", Owner: api.Owner{Dir: sandbox}, GID: buildtest.Nobody})
	if err != nil {
		t.Fatal(err)
	}
	st, err = os.Stat(nix.fifo.Path())
	if err != nil {
		t.Fatal(err)
	}
	sys = st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o660 || sys.Uid != 0 || sys.Gid != buildtest.Nobody {
		t.Errorf("a nix build's fifo is %v %d:%d; want 0660 0:%d", st.Mode().Perm(), sys.Uid, sys.Gid, buildtest.Nobody)
	}

	// A restarted tokend adopts the fifo it gave to the member.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	again := startBroker(t, dir, 4)
	if l := leaseByID(again.Status(), reg.ID); l.Name != "mine" {
		t.Errorf("after a restart the member's lease is %+v", l)
	}
}
