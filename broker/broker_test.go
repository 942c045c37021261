package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/jobserver"
)

// The test binary doubles as the child processes some tests need: a build
// that holds tokens and is then killed, and a client run as another user
// (sendRequests).
func TestMain(m *testing.M) {
	switch os.Getenv("TOKEND_BROKER_TEST_CHILD") {
	case "hold":
		holdTokens()
	case "requests":
		sendRequests()
	default:
		os.Exit(m.Run())
	}
}

// holdTokens takes TOKEND_HOLD tokens from the FIFO in MAKEFLAGS, says so,
// and waits to be killed, like a make whose jobs are running.
func holdTokens() {
	n, _ := strconv.Atoi(os.Getenv("TOKEND_HOLD"))
	c, err := jobserver.FromEnv()
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	for range n + 1 { // the implicit slot, then n tokens
		if _, err := c.Acquire(ctx); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Println("held")
	time.Sleep(time.Hour)
}

// startBroker runs a broker with a fixed budget in a fresh runtime
// directory until the test ends.
func startBroker(t *testing.T, dir string, budget int) *Broker {
	t.Helper()
	return startBrokerWith(t, Options{RuntimeDir: dir, Budget: budget})
}

// startBrokerWith is startBroker with more options; it logs to the test.
func startBrokerWith(t *testing.T, opts Options) *Broker {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}})
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broker stopped with %v", err)
		}
		if st := b.Status(); st.InvariantViolations != 0 {
			t.Errorf("broker found %d accounting errors, last: %s", st.InvariantViolations, st.LastViolation)
		}
	})
	return b
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// waitStatus polls the broker until cond holds.
func waitStatus(t *testing.T, b *Broker, what string, cond func(api.Status) bool) api.Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := b.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s; status: %+v", what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func leaseByID(st api.Status, id string) api.LeaseStatus {
	for _, l := range st.Leases {
		if l.ID == id {
			return l
		}
	}
	return api.LeaseStatus{Registration: api.Registration{ID: id, Name: "<gone>"}}
}

// jobs runs workers that take a slot, hold it briefly and give it back,
// counting how many slots are held at once across all of them: the
// concurrency a build would reach.
type jobs struct {
	running, peak atomic.Int64
	stop          context.CancelFunc
	ctx           context.Context
	wg            sync.WaitGroup
}

func newJobs() *jobs {
	j := &jobs{}
	j.ctx, j.stop = context.WithCancel(context.Background())
	return j
}

func (j *jobs) run(t *testing.T, c *jobserver.Client, workers int, hold time.Duration) {
	for range workers {
		j.wg.Add(1)
		go func() {
			defer j.wg.Done()
			for {
				s, err := c.Acquire(j.ctx)
				if err != nil {
					return
				}
				n := j.running.Add(1)
				for {
					p := j.peak.Load()
					if n <= p || j.peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(hold)
				j.running.Add(-1)
				if err := c.Release(s); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
}

func (j *jobs) close() {
	j.stop()
	j.wg.Wait()
}

func dial(t *testing.T, fifo string) *jobserver.Client {
	t.Helper()
	c, err := jobserver.Dial(jobserver.FIFOAuth(fifo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func self() api.Owner { return api.Owner{PID: os.Getpid()} }

func TestLeasesShareTheBudgetWithoutExceedingIt(t *testing.T) {
	b := startBroker(t, t.TempDir(), 6)
	j := newJobs()
	defer j.close()

	a, err := b.Register(LeaseRequest{Name: "a", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	j.run(t, dial(t, a.fifo.Path()), 8, 5*time.Millisecond)
	waitStatus(t, b, "a lone lease to get the whole allowance", func(st api.Status) bool { return leaseByID(st, a.ID).Granted == 5 })

	// Later builds wait for admission, as tokenctl run does, so their
	// implicit slots never push the host over the budget.
	busyLeases(t, b, j, "b", "c")
	st := waitStatus(t, b, "equal shares", func(st api.Status) bool {
		for _, l := range st.Leases {
			if l.Granted != 1 {
				return false
			}
		}
		return true
	})
	if st.Allowance != 3 || st.Granted != 3 {
		t.Fatalf("allowance %d granted %d, want 3 and 3", st.Allowance, st.Granted)
	}
	j.close()
	if p := j.peak.Load(); p > 6 {
		t.Fatalf("%d jobs ran at once under a budget of 6", p)
	}
	t.Logf("peak concurrency %d under budget 6", j.peak.Load())
}

// busyLeases registers a lease for each name, waiting for admission as
// tokenctl run does, and keeps 8 clients of each busy with short jobs;
// it returns their IDs.
func busyLeases(t *testing.T, b *Broker, j *jobs, names ...string) []string {
	t.Helper()
	var ids []string
	for _, name := range names {
		l, err := b.Register(LeaseRequest{Name: name, Owner: self(), GID: -1, Wait: true})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
		waitStatus(t, b, name+" to be admitted", func(st api.Status) bool { return leaseByID(st, l.ID).Admitted })
		j.run(t, dial(t, l.fifo.Path()), 8, 5*time.Millisecond)
	}
	return ids
}

// TestServedFirstGetsTheAllowance: the lease the memory controller names
// takes the whole allowance from a hungry neighbour, which goes on at its
// implicit slot, within the budget; unnamed, the two share again.
func TestServedFirstGetsTheAllowance(t *testing.T) {
	b := startBroker(t, t.TempDir(), 6)
	j := newJobs()
	defer j.close()
	ids := busyLeases(t, b, j, "a", "b")
	granted := func(a, bb int) func(api.Status) bool {
		return func(st api.Status) bool {
			return leaseByID(st, ids[0]).Granted == a && leaseByID(st, ids[1]).Granted == bb
		}
	}
	waitStatus(t, b, "equal shares", granted(2, 2))

	b.ServeFirst(ids[1], "test")
	st := waitStatus(t, b, "b served first", granted(0, 4))
	if !leaseByID(st, ids[1]).First || leaseByID(st, ids[0]).First {
		t.Fatalf("status First: a %v, b %v; want only b", leaseByID(st, ids[0]).First, leaseByID(st, ids[1]).First)
	}
	b.ServeFirst("", "")
	waitStatus(t, b, "equal shares again", granted(2, 2))
	j.close()
	if p := j.peak.Load(); p > 6 {
		t.Fatalf("%d jobs ran at once under a budget of 6", p)
	}
}

func TestShrinkingBudgetIsCollectedAndGrowsBack(t *testing.T) {
	b := startBroker(t, t.TempDir(), 8)
	l, err := b.Register(LeaseRequest{Name: "busy", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	j := newJobs()
	defer j.close()
	j.run(t, dial(t, l.fifo.Path()), 12, 2*time.Millisecond)
	waitStatus(t, b, "all 7 tokens granted", func(st api.Status) bool { return st.Granted == 7 })

	// The build keeps every token busy, so the broker must win returned
	// tokens from clients that read again at once.
	if err := b.SetBudget(2); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, "the debt to be paid", func(st api.Status) bool { return st.Granted == 1 && st.Debt == 0 })
	j.peak.Store(j.running.Load())
	time.Sleep(300 * time.Millisecond)
	if p := j.peak.Load(); p > 2 {
		t.Fatalf("after shrinking to 2, %d jobs ran at once", p)
	}
	if err := b.SetBudget(8); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, b, "growth back to 7 tokens", func(st api.Status) bool { return st.Granted == 7 })
	if st.Budget != 8 || st.BudgetReason != "operator" {
		t.Fatalf("budget %d (%s), want 8 (operator)", st.Budget, st.BudgetReason)
	}
}

func TestTokensOfAKilledBuildAreReclaimed(t *testing.T) {
	b := startBroker(t, t.TempDir(), 5)
	l := killHolder(t, b)
	killed := time.Now()

	st := waitStatus(t, b, "3 leaked tokens reclaimed", func(st api.Status) bool { return st.ReclaimedTotal == 3 })
	t.Logf("reclaimed %v after the last holder died", time.Since(killed))
	if got := leaseByID(st, l.ID); got.Reclaimed != 3 {
		t.Fatalf("lease reclaimed %d, want 3", got.Reclaimed)
	}
	// The survivor keeps its one free token; the reclaimed three are back
	// in the budget for whoever is hungry.
	if st.Allowance-st.Granted != 3 {
		t.Fatalf("%d tokens free in the budget after reclaiming 3: %+v", st.Allowance-st.Granted, st)
	}
}

// killHolder registers a lease in b, whose budget is 5, and kills a
// client of it that holds 3 of its 4 tokens.
func killHolder(t *testing.T, b *Broker) *Lease {
	t.Helper()
	l, err := b.Register(LeaseRequest{Name: "doomed", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, "4 tokens granted", func(st api.Status) bool { return st.Granted == 4 })
	child := startHolding(t, b, l, 3)
	child.Process.Kill()
	child.Wait()
	return l
}

// startHolding starts a client of l's FIFO that takes n tokens and keeps
// them, like a make whose jobs run, until it is killed.
func startHolding(t *testing.T, b *Broker, l *Lease, n int) *exec.Cmd {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "TOKEND_BROKER_TEST_CHILD=hold", fmt.Sprintf("TOKEND_HOLD=%d", n),
		"MAKEFLAGS="+jobserver.WithAuth("", jobserver.FIFOAuth(l.fifo.Path())))
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "held\n" {
		t.Fatalf("child said %q, want held", line)
	}
	if got := leaseByID(b.Status(), l.ID); got.Held != n {
		t.Fatalf("lease holds %d, want %d: %+v", got.Held, n, got)
	}
	return child
}

// TestUnopenedFIFONeedsNoScan: inotify tells that nobody ever opened a
// lease's FIFO, so it goes as it ends without a look at /proc; one that a
// client opened needs that look. The broker's /proc here does not exist,
// so every scan fails.
func TestUnopenedFIFONeedsNoScan(t *testing.T) {
	var logs lockedBuilder
	b := startBrokerWith(t, Options{RuntimeDir: t.TempDir(), Budget: 5, ProcDir: filepath.Join(t.TempDir(), "no-proc"),
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.MultiWriter(testWriter{t}, &logs)})})
	unused, err := b.Register(LeaseRequest{Name: "unused", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.End(0, unused.ID, "test"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, "the unused lease gone", func(st api.Status) bool { return leaseByID(st, unused.ID).Name == "<gone>" })

	killHolder(t, b)
	waitStatus(t, b, "a failed scan", func(api.Status) bool { return strings.Contains(logs.String(), "cannot look for jobserver holders") })
	if st := b.Status(); st.ReclaimedTotal != 0 {
		t.Fatalf("reclaimed %d tokens of a fifo a client opened, without a scan", st.ReclaimedTotal)
	}
}

func TestEndedLeaseGivesBackAllItsTokens(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, dir, 4)
	l, err := b.Register(LeaseRequest{Name: "short", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, l.fifo.Path())
	waitStatus(t, b, "3 tokens granted", func(st api.Status) bool { return st.Granted == 3 })
	implicit, _ := c.Acquire(context.Background())
	held, err := c.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.End(0, l.ID, "test"); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, b, "free tokens back, the held one owed", func(st api.Status) bool {
		return st.Granted == 1 && leaseByID(st, l.ID).Owed == 1
	})
	if !leaseByID(st, l.ID).Ending {
		t.Fatalf("lease not ending: %+v", st)
	}
	c.Release(held)
	c.Release(implicit)
	c.Close()
	st = waitStatus(t, b, "the lease to be gone", func(st api.Status) bool { return len(st.Leases) == 0 })
	if st.Granted != 0 || st.ReclaimedTotal != 0 {
		t.Fatalf("granted %d reclaimed %d after a clean end, want 0 and 0", st.Granted, st.ReclaimedTotal)
	}
	if _, err := os.Stat(l.fifo.Path()); !os.IsNotExist(err) {
		t.Fatalf("fifo of an ended lease still exists: %v", err)
	}
}

func TestOwnerExitEndsLease(t *testing.T) {
	b := startBroker(t, t.TempDir(), 4)
	owner := exec.Command("sleep", "60")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	dirOwner := t.TempDir()
	byPID, err := b.Register(LeaseRequest{Name: "pid", Owner: api.Owner{PID: owner.Process.Pid}, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	byDir, err := b.Register(LeaseRequest{Name: "dir", Owner: api.Owner{Dir: dirOwner}, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	owner.Process.Kill()
	owner.Wait()
	os.Remove(dirOwner)
	waitStatus(t, b, "both leases gone", func(st api.Status) bool {
		return leaseByID(st, byPID.ID).Name == "<gone>" && leaseByID(st, byDir.ID).Name == "<gone>"
	})
}

// TestOwnerDirGoneEndsLeaseAtOnce: a lease owned by a directory ends when
// the directory is removed or renamed, by inotify. The broker never ticks
// here, so the periodic look at every owner cannot be what ends it.
func TestOwnerDirGoneEndsLeaseAtOnce(t *testing.T) {
	b := startBrokerWith(t, Options{RuntimeDir: t.TempDir(), Budget: 4, Tick: time.Hour})
	parent := t.TempDir()
	removed, renamed := filepath.Join(parent, "removed.drv.chroot"), filepath.Join(parent, "renamed.drv.chroot")
	var ids []string
	for _, dir := range []string{removed, renamed} {
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		l, err := b.Register(LeaseRequest{Name: filepath.Base(dir), Owner: api.Owner{Dir: dir}, GID: -1})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
	}
	if err := os.Remove(removed); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(renamed, renamed+".old"); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, b, "both leases ending", func(st api.Status) bool {
		return leaseByID(st, ids[0]).Ending && leaseByID(st, ids[1]).Ending
	})
	for i, dir := range []string{removed, renamed} {
		if got, want := leaseByID(st, ids[i]).EndReason, "owner directory "+dir+" removed"; got != want {
			t.Errorf("lease of %s ended with %q, want %q", dir, got, want)
		}
	}
}

func TestInflatedFIFOIsTrimmed(t *testing.T) {
	b := startBroker(t, t.TempDir(), 3)
	l, err := b.Register(LeaseRequest{Name: "liar", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, "2 tokens granted", func(st api.Status) bool { return st.Granted == 2 })
	f, err := os.OpenFile(l.fifo.Path(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("+++++"))
	f.Close()
	st := waitStatus(t, b, "the excess removed", func(st api.Status) bool { return st.InflatedTotal == 5 })
	if got := leaseByID(st, l.ID); got.Free != 2 || got.Granted != 2 {
		t.Fatalf("after trimming: %+v, want 2 free of 2", got)
	}
}

func TestRestartAdoptsLeasesAndCleansStaleFIFOs(t *testing.T) {
	dir := t.TempDir()
	first, err := New(Options{RuntimeDir: dir, Budget: 5})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	l, err := first.Register(LeaseRequest{Name: "survivor", Owner: self(), GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, l.fifo.Path())
	waitStatus(t, first, "4 tokens granted", func(st api.Status) bool { return st.Granted == 4 })
	c.Acquire(context.Background()) // implicit
	for range 2 {
		if _, err := c.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "leases", "deadbeef0000.fifo")
	if err := syscall.Mkfifo(stale, 0o600); err != nil {
		t.Fatal(err)
	}
	notOurs := filepath.Join(dir, "leases", "notes.txt")
	if err := os.WriteFile(notOurs, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	second := startBroker(t, dir, 5)
	st := second.Status()
	got := leaseByID(st, l.ID)
	if got.Name != "survivor" || got.Granted != 4 || got.Held != 2 || got.Free != 2 {
		t.Fatalf("adopted lease %+v, want survivor with 4 granted, 2 held, 2 free", got)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale fifo not removed: %v", err)
	}
	if _, err := os.Stat(notOurs); err != nil {
		t.Fatalf("a file tokend did not make was removed: %v", err)
	}
}

func TestCorruptStateIsRefused(t *testing.T) {
	for name, text := range map[string]string{
		"not json":      "{not json",
		"other version": `{"version": 99, "leases": []}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			os.WriteFile(path, []byte(text), 0o600)
			_, err := New(Options{RuntimeDir: dir})
			if err == nil {
				t.Fatal("a corrupt state file was accepted")
			}
			// The error names the file and the way out, and is about the
			// state: not some other failure of New.
			for _, want := range []string{"read state " + path, "move it aside"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			var syntax *json.SyntaxError
			if isJSON := errors.As(err, &syntax); isJSON != (name == "not json") {
				t.Errorf("error %q: a JSON syntax error is %v, want %v", err, isJSON, name == "not json")
			}
			if raw, _ := os.ReadFile(path); string(raw) != text {
				t.Errorf("the refused state file was changed to %q", raw)
			}
		})
	}
}
