package broker

import (
	"context"
	"encoding/json"
	"github.com/tokend/tokend/internal/buildtest"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
)

// serve runs the API of b on a socket in a directory every user can reach.
func serve(t *testing.T, b *Broker, leaseGroup string) string {
	t.Helper()
	dir := buildtest.WorldDir(t)
	srv, err := NewServer(b, leaseGroup, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "tokend.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return socket
}

func TestAPIRegisterStatusEnd(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	c := api.NewClient(serve(t, b, ""))
	ctx := context.Background()

	reg, err := c.Register(ctx, api.RegisterRequest{Name: "api", OwnerPID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if reg.Name != "api" || !strings.HasSuffix(reg.FIFO, reg.ID+".fifo") {
		t.Fatalf("registered %+v", reg)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Leases) != 1 || st.Leases[0].ID != reg.ID || st.Budget != 4 {
		t.Fatalf("status %+v", st)
	}
	l, err := c.AwaitAdmission(ctx, reg.ID) // a lease that need not wait answers at once
	if err != nil || !l.Admitted {
		t.Fatalf("lease %+v, %v; want an admitted lease", l, err)
	}
	if err := c.End(ctx, reg.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.End(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("ending an unknown lease: %v, want 404", err)
	}
	if _, err := c.SetBudget(ctx, 70000); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("budget 70000: %v, want a range error", err)
	}
}

func TestAPIRejectsMalformedRequestsAndChangesNothing(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	socket := serve(t, b, "")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	cases := []struct{ method, path, body, want string }{
		{"POST", api.PathLeases, `{"name": "x", "owner_pid": 1, "surprise": 1}`, "unknown field"},
		{"POST", api.PathLeases, `{"name": "x"`, "malformed"},
		{"POST", api.PathLeases, `{"name": "x", "owner_pid": 1} {}`, "more than one"},
		{"POST", api.PathLeases, `{"name": ""}`, "needs a name"},
		{"POST", api.PathLeases, `{"name": "` + strings.Repeat("x", MaxNameBytes+1) + `", "owner_pid": 1}`, "more than the limit of 128"},
		{"POST", api.PathLeases, `{"name": "ok\u001b[2K\rforged 0 0", "owner_pid": 1}`, "unprintable character U+001B"},
		{"POST", api.PathLeases, `{"name": "line\nbreak", "owner_pid": 1}`, "unprintable character U+000A"},
		{"POST", api.PathLeases, `{"name": "x"}`, "needs an owner"},
		{"POST", api.PathLeases, `{"name": "x", "owner_dir": "relative"}`, "absolute"},
		{"POST", api.PathLeases, `{"name": "x", "owner_pid": 999999999}`, "owner process"},
		{"POST", api.PathLeases, `{"name": "` + strings.Repeat("x", maxRequestBody) + `"}`, "too large"},
		{"GET", api.PathLeases + "/x?wait=forever", ``, "only thing to wait for"},
		{"PUT", api.PathBudget, `{}`, "needs \"tokens\""},
		{"PUT", api.PathBudget, `{"tokens": -1}`, "outside"},
		{"PUT", api.PathBudget, `{"tokens": "many"}`, "malformed"},
		{"PUT", api.PathBudget, `{"tokens": NaN}`, "malformed"},
		{"PUT", api.PathBudget, `{"tokens": Infinity}`, "malformed"},
		{"PUT", api.PathBudget, `{"tokens": 1e400}`, "malformed"},
		{"PUT", api.PathBudget, `{"tokens": 2.5}`, "malformed"},
		{"POST", api.PathLeases, `{"name": "x", "owner_pid": NaN}`, "malformed"},
		{"POST", api.PathLeases, `{"name": "x", "owner_pid": 1e400}`, "malformed"},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, "http://tokend"+tc.path, strings.NewReader(tc.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s %s %.60s: %d %q, want 4xx mentioning %q", tc.method, tc.path, tc.body, resp.StatusCode, e.Error, tc.want)
		}
	}
	st := b.Status()
	if len(st.Leases) != 0 || st.Budget != 4 {
		t.Fatalf("malformed requests changed the broker: %+v", st)
	}
}

// A real second user, not a field in a request, must be refused.
func TestAPIPermissionsFollowPeerCredentials(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	answers := asNobody(t, serve(t, b, ""),
		apiCall{"GET", api.PathStatus, ""},
		register(`{"name": "intruder", "owner_pid": $SELF}`),
		apiCall{"PUT", api.PathBudget, `{"tokens": 1}`},
	)
	expect(t, "status as uid 65534", answers[0], 200, `"budget":4`)
	expect(t, "register as uid 65534", answers[1], 403, "uid 65534 may not register")
	expect(t, "set budget as uid 65534", answers[2], 403, "may not set the budget")
	if st := b.Status(); len(st.Leases) != 0 || st.Budget != 4 {
		t.Fatalf("another user changed the broker: %+v", st)
	}
}

// Membership of the lease group counts however the client runs: a member
// whose process has another group as its own (a user whose primary group
// is not the lease group, or who ran newgrp) may register. Membership comes
// from the user database, here nobody's own group, which a process running
// as nobody under another gid still belongs to; a group nobody is not in
// stays closed to it.
func TestAPILeaseGroupMemberUnderAnotherGID(t *testing.T) {
	nobody, err := user.LookupId(strconv.Itoa(buildtest.Nobody))
	if err != nil {
		t.Fatal(err)
	}
	own, err := user.LookupGroupId(nobody.Gid)
	if err != nil {
		t.Fatalf("nobody's group %s: %v", nobody.Gid, err)
	}
	ownGID, _ := strconv.Atoi(own.Gid)
	const otherGID = 1 // daemon on Debian; any gid but nobody's own will do
	buildtest.Require(t, ownGID != otherGID, "nobody's own group to be another than gid 1")
	cred := &syscall.Credential{Uid: buildtest.Nobody, Gid: otherGID, Groups: []uint32{uint32(ownGID)}}
	calls := []apiCall{register(`{"name": "member", "owner_pid": $SELF}`), {"PUT", api.PathBudget, `{"tokens": 1}`}}

	b := startBroker(t, t.TempDir(), 4)
	answers := asUser(t, serve(t, b, own.Name), cred, calls...)
	expect(t, "register as nobody under gid 1, lease group "+own.Name, answers[0], 201, `"name":"member"`)
	if st := b.Status(); len(st.Leases) != 1 || st.Leases[0].UID != buildtest.Nobody {
		t.Errorf("leases %+v, want nobody's", st.Leases)
	}
	expect(t, "set budget as a lease group member", answers[1], 403, "may not set the budget")

	closed := startBroker(t, t.TempDir(), 4)
	answers = asUser(t, serve(t, closed, "root"), cred, calls...)
	expect(t, "register as nobody, lease group root", answers[0], 403, "uid 65534 may not register")
}

func TestAPIAdmissionWaitWakesWhenRoomAppears(t *testing.T) {
	b := startBroker(t, t.TempDir(), 1)
	c := api.NewClient(serve(t, b, ""))
	ctx := context.Background()
	first, err := c.Register(ctx, api.RegisterRequest{Name: "first", OwnerPID: os.Getpid(), Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := c.AwaitAdmission(ctx, first.ID); err != nil || !l.Admitted {
		t.Fatalf("first lease: %+v, %v; want admitted", l, err)
	}
	second, err := c.Register(ctx, api.RegisterRequest{Name: "second", OwnerPID: os.Getpid(), Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	// The budget of 1 is the first lease's implicit slot: the second waits,
	// and a long poll answers "not yet" when its time is up.
	if l, err := c.AwaitAdmission(ctx, second.ID); err != nil || l.Admitted {
		t.Fatalf("second lease under a full budget: %+v, %v; want waiting", l, err)
	}
	got := make(chan api.LeaseStatus, 1)
	go func() {
		for {
			l, err := c.AwaitAdmission(ctx, second.ID)
			if err != nil {
				t.Error(err)
				close(got)
				return
			}
			if l.Admitted {
				got <- l
				return
			}
		}
	}()
	if err := c.End(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	if l, ok := <-got; !ok || l.ID != second.ID {
		t.Fatalf("waiting client got %+v", l)
	}
}
