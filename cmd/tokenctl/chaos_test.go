package main

// Issue 13's chaos test: a hundred builds of the four client kinds under
// tokenctl run, killed at random times with random signals, while tokend
// itself is killed with SIGKILL and restarted three times. What it
// asserts is listed on TestChaos.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
)

const (
	chaosClients = 100
	// The clients run in waves of 2 to 14 at once: fewer than the budget
	// share tokens, more wait for admission.
	chaosWaveMin, chaosWaveMax = 2, 14
	chaosWave                  = 10 // clients started before the next wave's size is drawn
	chaosBudget                = 12
	chaosRestarts              = 3
	// chaosHang is how long one client may take from its start until its
	// last process is gone. It detects hangs and is no speed limit: a
	// client takes a few seconds, waiting for admission included.
	chaosHang = 2 * time.Minute
	// chaosSeedEnv replays a run: the seed every run logs.
	chaosSeedEnv = "TOKEND_CHAOS_SEED"
)

// clientKind is one of the four jobserver clients.
type clientKind int

const (
	kindMake44 clientKind = iota
	kindMake43
	kindNinja
	kindCargo
)

var kindNames = [...]string{"make-4.4", "make-4.3", "ninja", "cargo"}

func (k clientKind) String() string { return kindNames[k] }

// rootLosesTokens says whether a client root that dies of a signal loses
// the tokens it holds, as /work/shared/notes/jobserver-clients.md measured
// it (jobserver's TestConformanceSignals keeps checking it).
var rootLosesTokens = map[clientKind]map[syscall.Signal]bool{
	kindMake43: {syscall.SIGINT: false, syscall.SIGTERM: false, syscall.SIGKILL: true},
	kindMake44: {syscall.SIGINT: true, syscall.SIGTERM: true, syscall.SIGKILL: true},
	kindNinja:  {syscall.SIGINT: false, syscall.SIGTERM: false, syscall.SIGKILL: true},
	kindCargo:  {syscall.SIGINT: true, syscall.SIGTERM: true, syscall.SIGKILL: true},
}

// target is what a signal reached in a build's process tree.
type target int

const (
	targetTokenctl target = iota
	targetRoot            // the make, ninja or cargo tokenctl runs
	targetJob             // a probe job, or cargo's rustc wrapper (a probe too)
	targetRustc
	targetOther // a shell between ninja and its job, anything else
)

var targetNames = [...]string{"tokenctl", "root", "job", "rustc", "other"}

func (tg target) String() string { return targetNames[tg] }

// aim is what a planned signal is meant for.
type aim int

const (
	aimTokenctl aim = iota
	aimRoot
	aimAny // a random process of the build's tree
)

// plannedSignal is a signal the test sends a client after it started.
type plannedSignal struct {
	sig   syscall.Signal
	aim   aim
	after time.Duration
	cont  time.Duration // after a SIGSTOP, how long until SIGCONT
}

// sentSignal is a signal delivered to a process of a client's tree, with
// the wall-clock times (as the probes stamp them) around kill(2).
type sentSignal struct {
	sig           syscall.Signal
	target        target
	pid           int
	comm          string
	before, after int64
}

// effect is what a delivered signal may do to a build's accounting.
type effect struct {
	// loses: the build's clients may die holding tokens, which tokend
	// must reclaim.
	loses bool
	// detaches: from then on the build's jobs may run outside its lease
	// (orphaned by their client, under a lease that ended with tokenctl,
	// killed without logging their end), so from the moment it was sent
	// they are not counted against the budget.
	detaches bool
}

func signalEffect(kind clientKind, tg target, sig syscall.Signal) effect {
	switch {
	case sig == syscall.SIGSTOP || sig == syscall.SIGCONT:
		return effect{}
	case tg == targetRoot || (tg == targetTokenctl && sig != syscall.SIGKILL):
		// tokenctl passes SIGINT and SIGTERM on to the root. A root that
		// gives its tokens back first ends its jobs (make 4.3 waits for
		// them or passes SIGTERM on, ninja passes the signal on, and a
		// probe logs its end), so its jobs stay counted.
		lost := rootLosesTokens[kind][sig]
		return effect{loses: lost, detaches: lost}
	case tg == targetTokenctl:
		// Killed, it leaves its build running under a lease that ends.
		return effect{detaches: true}
	case tg == targetRustc:
		// The wrapper, which is the logged job, goes on; rustc (one
		// codegen unit) holds no token (measured here).
		return effect{}
	case sig == syscall.SIGKILL:
		// A job killed so logs no end; a shell killed so orphans its job.
		return effect{detaches: true}
	case tg == targetJob && (kind != kindNinja || sig != syscall.SIGINT):
		// The probe logs its end and dies; its client gives its slot back.
		return effect{}
	}
	// A shell between ninja and its job, or a probe under it dying of
	// SIGINT, which the shell then dies of too (of SIGTERM it exits 143).
	// ninja 1.13.2 takes a job that died of SIGINT or SIGTERM for the
	// user's interrupt: it puts every token back at once while its other
	// jobs run on until they end, and at times loses one (measured here;
	// make and cargo do neither). A killed shell's job goes on orphaned.
	return effect{loses: kind == kindNinja, detaches: true}
}

// chaosClient is one build of the run.
type chaosClient struct {
	kind   clientKind
	build  *build
	plans  []plannedSignal
	sent   []sentSignal
	start  time.Time
	exited bool // tokenctl has exited
	gone   bool // and every process of the build with it
	code   int  // tokenctl's exit status
	// noLease: tokenctl ran the command without a lease (tokend was down
	// or went down while it waited), outside the budget by design.
	noLease bool
	lease   string // its lease's ID, from tokend's logs
}

// effect is what the signals delivered to c may have done together.
func (c *chaosClient) effect() (e effect, detached int64) {
	stopped := map[int]bool{}
	for _, s := range c.sent {
		se := signalEffect(c.kind, s.target, s.sig)
		switch s.sig {
		case syscall.SIGSTOP:
			stopped[s.pid] = true
		case syscall.SIGCONT:
			delete(stopped, s.pid)
		case syscall.SIGKILL:
			delete(stopped, s.pid)
			if s.target == targetTokenctl && len(stopped) > 0 {
				// tokenctl led the build's process group: killed while
				// a process of it is stopped, it leaves an orphaned group
				// with a stopped member, and the kernel sends the whole
				// group SIGHUP (then SIGCONT), on which make 4.4 and
				// cargo die holding their tokens.
				se = effect{loses: true, detaches: true}
			}
		}
		e.loses = e.loses || se.loses
		if se.detaches && !e.detaches {
			e.detaches, detached = true, s.before
		}
	}
	return e, detached
}

func (c *chaosClient) lethal() bool {
	return slices.ContainsFunc(c.sent, func(s sentSignal) bool { return s.sig != syscall.SIGSTOP && s.sig != syscall.SIGCONT })
}

// chaosRun is the whole run's state. Everything is done from the test's
// goroutine, in one loop, so the run is a sequence of actions.
type chaosRun struct {
	t       *testing.T
	rng     *rand.Rand
	dir     string
	probe   *buildtest.Probe
	log     *buildtest.Log
	tools   map[clientKind]string
	d       *daemon   // the tokend running, or the last one killed
	daemons []*daemon // every tokend started, in order
	up      bool
	clients []*chaosClient
	next    int // the next client to start
	actions []action
	killAt  []int // start the next tokend kill once this many clients started
	waves   []int // how many clients run at once, per chaosWave started
	kills   int
	// savedGrants sums, per lease, what the state file counted granted
	// when tokend was killed.
	savedGrants map[string]int
	polled      time.Time
	maxOut      int // the most implicit slots and tokens ever out at once, seen in status
	statuses    int
}

// action is something to do at a time.
type action struct {
	at time.Time
	do func()
}

func (r *chaosRun) after(d time.Duration, do func()) {
	r.actions = append(r.actions, action{at: time.Now().Add(d), do: do})
}

func (r *chaosRun) duration(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int64N(int64(hi-lo)+1))
}

// Issue 13: 100 clients, 25 of each kind (make 4.3, make 4.4, ninja,
// cargo), in waves of 2 to 14 at a time under a budget of 12, get random
// signals at random times: three in four one of SIGINT, SIGTERM or
// SIGKILL, to tokenctl, to the client root or to any process of the
// build's tree, and about one in three a SIGSTOP followed by SIGCONT.
// Meanwhile tokend is killed with SIGKILL and restarted three times. Each
// run logs its seed; TOKEND_CHAOS_SEED=SEED replays its plan (the timing
// is the machine's). It asserts:
//   - no build hung: every client's processes are all gone within
//     chaosHang of its start; one that got no lethal signal succeeded and
//     ran each of its jobs once, with or without a lease;
//   - invariant violations 0: the jobs running at once, measured from the
//     probes' own start and end stamps, never exceed the budget (implicit
//     slots included), counting every job of every build that had a lease
//     until something detached its jobs from it (see effect); every
//     status read shows each lease's free + held = granted, the leases'
//     grants summing to the total, and admitted leases' implicit slots
//     plus the tokens out within the budget; tokend's accounting-error
//     counter is 0 before every kill and at the end, and no tokend logged
//     a broken invariant;
//   - every token is accounted for: after the run no lease is left and
//     nothing is granted, a last build runs exactly the budget at once,
//     no FIFO ever held more than it was granted (inflated 0), and the
//     leases' reclaimed counts add up to reclaimed_total;
//   - reclaimed counts match the kills: a lease whose build no signal
//     could make lose tokens (see signalEffect) reclaimed nothing, but
//     for what a restart counted out that was not (tokend saves its state
//     after taking tokens back and before giving them, so one killed in
//     between restarts counting too many out), at most what the state
//     file gave the lease at the kills; a root killed with SIGKILL while
//     running k jobs had k-1 tokens reclaimed at least.
func TestChaos(t *testing.T) {
	tools := map[clientKind]string{
		kindMake44: buildtest.Make44(t), kindMake43: buildtest.Make43(t),
		kindNinja: buildtest.Ninja(t), kindCargo: buildtest.Cargo(t),
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(chaosSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: want the seed a run logged", chaosSeedEnv, s)
		}
	}
	t.Logf("seed %d (%s=%d replays this run's plan)", seed, chaosSeedEnv, seed)
	began := time.Now()
	r := &chaosRun{
		t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), dir: t.TempDir(),
		probe: buildtest.BuildProbe(t), log: buildtest.NewLog(t), tools: tools, savedGrants: map[string]int{},
	}
	r.plan()
	r.d = startDaemon(t, r.dir, chaosBudget)
	r.daemons, r.up = []*daemon{r.d}, true
	r.loop()
	t.Logf("%d clients ended %v after the start; %d status reads, at most %d implicit slots and tokens out of %d",
		len(r.clients), time.Since(began).Round(time.Millisecond), r.statuses, r.maxOut, chaosBudget)
	if t.Failed() {
		return
	}
	r.checkTokensBack()
	r.checkLogs()
	r.checkConcurrency()
	t.Logf("took %v in all", time.Since(began).Round(time.Millisecond))
}

// plan decides the clients, their builds and signals, and when tokend is
// killed.
func (r *chaosRun) plan() {
	kinds := make([]clientKind, chaosClients)
	for i := range kinds {
		kinds[i] = clientKind(i % 4)
	}
	r.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for i, kind := range kinds {
		c := &chaosClient{kind: kind}
		name := fmt.Sprintf("chaos-%03d-%s", i, kind)
		sleep := r.duration(50*time.Millisecond, 200*time.Millisecond)
		switch kind {
		case kindCargo:
			c.build = cargoBuild(r.t, r.tools[kind], fmt.Sprintf("c%03dk", i), r.probe, r.log, 2+r.rng.IntN(4), sleep)
		case kindNinja:
			c.build = ninjaBuild(r.t, r.tools[kind], fmt.Sprintf("c%03d-", i), r.probe, r.log, 6+r.rng.IntN(9), sleep)
		default:
			c.build = makeBuild(r.t, name, r.tools[kind], fmt.Sprintf("c%03d-", i), r.probe, r.log, 6+r.rng.IntN(9), sleep)
		}
		c.build.name = name
		if r.rng.Float64() < 0.75 {
			sigs := []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL}
			aims := []aim{aimTokenctl, aimRoot, aimRoot, aimAny, aimAny}
			c.plans = append(c.plans, plannedSignal{sig: sigs[r.rng.IntN(3)], aim: aims[r.rng.IntN(len(aims))], after: r.duration(0, 2500*time.Millisecond)})
		}
		if r.rng.Float64() < 0.3 {
			c.plans = append(c.plans, plannedSignal{sig: syscall.SIGSTOP, aim: aim(r.rng.IntN(3)), after: r.duration(0, 2*time.Second), cont: r.duration(100*time.Millisecond, 700*time.Millisecond)})
		}
		r.clients = append(r.clients, c)
	}
	for range chaosClients / chaosWave {
		r.waves = append(r.waves, chaosWaveMin+r.rng.IntN(chaosWaveMax-chaosWaveMin+1))
	}
	// Spread over the run, while builds run.
	for k := range chaosRestarts {
		span := chaosClients * 8 / 10 / chaosRestarts
		r.killAt = append(r.killAt, chaosClients/10+k*span+r.rng.IntN(span))
	}
}

// loop runs the clients and the actions until every client has ended and
// nothing is left to do.
func (r *chaosRun) loop() {
	t := r.t
	for {
		now := time.Now()
		running := 0
		for _, c := range r.clients[:r.next] {
			if !c.gone {
				running++
			}
		}
		if r.next < len(r.clients) && running < r.waves[r.next/chaosWave] {
			r.startClient(r.clients[r.next])
			r.next++
			if len(r.killAt) > 0 && r.next >= r.killAt[0] {
				r.killAt = r.killAt[1:]
				r.after(r.duration(0, 600*time.Millisecond), r.killTokend)
			}
		}
		due := r.actions[:0:0]
		var later []action
		for _, a := range r.actions {
			if now.After(a.at) {
				due = append(due, a)
			} else {
				later = append(later, a)
			}
		}
		r.actions = later
		for _, a := range due {
			a.do()
		}
		for _, c := range r.clients[:r.next] {
			r.watch(c, now)
		}
		if r.up && now.Sub(r.polled) > 500*time.Millisecond {
			r.checkStatus(r.d.status(t), "during the run")
			r.polled = now
		}
		if t.Failed() {
			return
		}
		if r.next == len(r.clients) && len(r.actions) == 0 && len(r.killAt) == 0 && !slices.ContainsFunc(r.clients, func(c *chaosClient) bool { return !c.gone }) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *chaosRun) startClient(c *chaosClient) {
	c.build.start(r.t, r.d)
	c.start = time.Now()
	for _, p := range c.plans {
		r.after(p.after, func() { r.deliver(c, p) })
	}
}

// watch notes a client's end, and fails the test if it hung.
func (r *chaosRun) watch(c *chaosClient, now time.Time) {
	if c.gone {
		return
	}
	if !c.exited {
		select {
		case <-c.build.proc.Done():
			c.exited = true
			c.code = exitCode(c.build.proc.Err())
			c.noLease = strings.Contains(c.build.proc.Output(), "without a lease")
		default:
		}
	}
	if c.exited && len(c.build.proc.Pids()) == 0 {
		c.gone = true
		return
	}
	if now.Sub(c.start) > chaosHang {
		r.t.Errorf("client %s hung: not over %v after its start (tokenctl exited: %v); signals %v; processes %v; status %+v; output:\n%s",
			c.build.name, chaosHang, c.exited, c.sent, r.tree(c), r.statusIfUp(), c.build.proc.Output())
		c.build.proc.Kill()
		c.gone = true
	}
}

func (r *chaosRun) statusIfUp() any {
	if !r.up {
		return "tokend down"
	}
	return r.d.status(r.t)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(interface{ Sys() any }); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ws.ExitStatus()
		}
	}
	return -1
}

// process is one process of a build's tree.
type process struct {
	pid, ppid int
	comm      string
}

func (p process) String() string { return fmt.Sprintf("%d/%s", p.pid, p.comm) }

// tree lists the live processes of c's build.
func (r *chaosRun) tree(c *chaosClient) []process {
	var out []process
	for _, pid := range c.build.proc.Pids() {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(raw)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(s[closing+1:])
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out = append(out, process{pid: pid, ppid: ppid, comm: s[open+1 : closing]})
	}
	return out
}

// classify tells what p is in c's tree.
func (c *chaosClient) classify(p process) target {
	tokenctl := c.build.proc.Cmd.Process.Pid
	switch {
	case p.pid == tokenctl:
		return targetTokenctl
	case p.ppid == tokenctl && p.comm == filepath.Base(c.build.argv[0]):
		return targetRoot
	case p.comm == "probe" || p.comm == "rustc-wrapper":
		return targetJob
	case p.comm == "rustc":
		return targetRustc
	}
	return targetOther
}

// deliver sends a planned signal to a process of c's tree. A root not
// started yet is waited for; a build that is over gets nothing.
func (r *chaosRun) deliver(c *chaosClient, p plannedSignal) {
	if c.exited {
		return
	}
	procs := r.tree(c)
	var pick []process
	for _, pr := range procs {
		tg := c.classify(pr)
		if p.aim == aimAny || (p.aim == aimTokenctl && tg == targetTokenctl) || (p.aim == aimRoot && tg == targetRoot) {
			pick = append(pick, pr)
		}
	}
	if len(pick) == 0 {
		r.after(30*time.Millisecond, func() { r.deliver(c, p) })
		return
	}
	pr := pick[r.rng.IntN(len(pick))]
	before := time.Now().UnixNano()
	err := syscall.Kill(pr.pid, p.sig)
	after := time.Now().UnixNano()
	if err != nil {
		return // it ended meanwhile
	}
	c.sent = append(c.sent, sentSignal{sig: p.sig, target: c.classify(pr), pid: pr.pid, comm: pr.comm, before: before, after: after})
	if p.sig == syscall.SIGSTOP {
		r.after(p.cont, func() {
			before := time.Now().UnixNano()
			if syscall.Kill(pr.pid, syscall.SIGCONT) == nil {
				c.sent = append(c.sent, sentSignal{sig: syscall.SIGCONT, target: c.classify(pr), pid: pr.pid, comm: pr.comm, before: before, after: time.Now().UnixNano()})
			}
		})
	}
}

func (s sentSignal) String() string {
	return fmt.Sprintf("%v to %s %s", s.sig, s.target, process{pid: s.pid, comm: s.comm})
}

// killTokend checks tokend's accounting, kills it with SIGKILL and
// restarts it after a while.
func (r *chaosRun) killTokend() {
	if !r.up {
		r.after(100*time.Millisecond, r.killTokend)
		return
	}
	st := r.d.status(r.t)
	r.checkStatus(st, fmt.Sprintf("before kill %d", r.kills+1))
	r.d.kill9(r.t)
	r.noteSavedGrants()
	r.up = false
	r.kills++
	down := r.duration(0, time.Second)
	r.t.Logf("kill %d of tokend: %d leases (%d granted), %d clients started; down for %v", r.kills, len(st.Leases), st.Granted, r.next, down.Round(time.Millisecond))
	r.after(down, func() {
		r.d = startDaemon(r.t, r.dir, chaosBudget)
		r.daemons = append(r.daemons, r.d)
		r.up = true
	})
}

// noteSavedGrants adds what the state file of the killed tokend counts
// granted to each lease: what its successor adopts.
func (r *chaosRun) noteSavedGrants() {
	raw, err := os.ReadFile(filepath.Join(r.dir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return // killed before its first lease
	}
	if err != nil {
		r.t.Fatalf("the state tokend left: %v", err)
	}
	var st struct {
		Leases []struct {
			ID      string `json:"id"`
			Granted int    `json:"granted"`
		} `json:"leases"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		r.t.Fatalf("the state tokend left: %v\n%s", err, raw)
	}
	for _, l := range st.Leases {
		r.savedGrants[l.ID] += l.Granted
	}
}

// checkStatus checks one status read's accounting.
func (r *chaosRun) checkStatus(st api.Status, when string) {
	t := r.t
	r.statuses++
	granted, admitted, reissued := 0, 0, 0
	for _, l := range st.Leases {
		if l.Free+l.Held != l.Granted || l.Free < 0 || l.Held < 0 || l.Reissued < 0 {
			t.Errorf("%s: lease %s %s: %d free + %d held != %d granted, or %d reissued", when, l.ID, l.Name, l.Free, l.Held, l.Granted, l.Reissued)
		}
		granted += l.Granted
		reissued += l.Reissued
		if l.Admitted && !l.Ending {
			admitted++
		}
	}
	if granted != st.Granted {
		t.Errorf("%s: the leases' grants sum to %d, status says %d granted", when, granted, st.Granted)
	}
	// Reissued tokens are in clients' hands too. No chaos client keeps
	// tokens without jobs for the share grace, so none are reissued, and
	// all that is out stays within the budget.
	if admitted+st.Granted+reissued > st.Budget || st.Budget != chaosBudget {
		t.Errorf("%s: %d admitted leases' implicit slots, %d tokens granted and %d reissued out under a budget of %d (want %d): %+v", when, admitted, st.Granted, reissued, st.Budget, chaosBudget, st)
	}
	if st.ReissuedTotal != 0 {
		t.Errorf("%s: %d tokens reissued, yet no chaos client keeps tokens without running jobs", when, st.ReissuedTotal)
	}
	if st.InvariantViolations != 0 {
		t.Errorf("%s: tokend found %d accounting errors, last: %s", when, st.InvariantViolations, st.LastViolation)
	}
	r.maxOut = max(r.maxOut, admitted+st.Granted+reissued)
}

// checkTokensBack checks that, with every client gone, no lease is left,
// nothing is granted and a last build gets the whole budget.
func (r *chaosRun) checkTokensBack() {
	t := r.t
	st := r.d.waitIdle(t)
	r.checkStatus(st, "after the run")
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	// Tokens the run lost without a trace would keep this build short of
	// the budget; the wait would fail.
	h := holdSlots(ctx, t, r.d, "after-chaos", chaosBudget)
	full := r.d.status(t)
	if len(full.Leases) != 1 || full.Leases[0].Held != chaosBudget-1 || full.Leases[0].Free != 0 {
		t.Errorf("a build running %d jobs after the run: want one lease holding %d tokens, none free: %+v", chaosBudget, chaosBudget-1, full.Leases)
	}
	h.release(ctx, t)
	st = r.d.waitIdle(t)
	if st.InflatedTotal != 0 {
		t.Errorf("FIFOs held %d tokens more than they were granted", st.InflatedTotal)
	}
	t.Logf("after the run: %d tokens reclaimed in all, %d inflated; a last build ran %d jobs at once", st.ReclaimedTotal, st.InflatedTotal, chaosBudget)
}

var (
	leaseStartedLine = regexp.MustCompile(`lease (?:started|adopted): lease=([0-9a-f]{12}) name=(\S+)`)
	leaseEndedLine   = regexp.MustCompile(`lease ended: lease=([0-9a-f]{12}) .*reclaimed=(\d+)`)
)

// checkLogs reads every tokend's log: which lease was whose and what each
// reclaimed in the end; and checks the reclaims against the signals.
func (r *chaosRun) checkLogs() {
	t := r.t
	names := map[string]string{}  // lease ID to name
	reclaimed := map[string]int{} // the last count each lease ended with
	for i, d := range r.daemons {
		out := d.proc.Output()
		for _, bad := range []string{"token accounting invariant broken", "ended lease still counts tokens", "lease lost its fifo", "fifo holder does not hold"} {
			if strings.Contains(out, bad) {
				t.Errorf("tokend %d logged %q:\n%s", i+1, bad, grepLines(out, bad))
			}
		}
		for _, m := range leaseStartedLine.FindAllStringSubmatch(out, -1) {
			names[m[1]] = m[2]
		}
		for _, m := range leaseEndedLine.FindAllStringSubmatch(out, -1) {
			reclaimed[m[1]], _ = strconv.Atoi(m[2])
		}
	}
	byName := map[string]string{}
	for id, name := range names {
		byName[name] = id
	}
	sum := 0
	for id := range names {
		if _, ok := reclaimed[id]; !ok {
			t.Errorf("lease %s (%s) never ended in tokend's logs", id, names[id])
		}
		sum += reclaimed[id]
	}
	if st := r.d.status(t); st.ReclaimedTotal != sum {
		t.Errorf("the leases ended with %d tokens reclaimed together, reclaimed_total is %d", sum, st.ReclaimedTotal)
	}

	phantoms, lossy, bounded := 0, 0, 0
	type row struct {
		kind   clientKind
		sig    syscall.Signal
		target target
	}
	signals, tokens := map[row]int{}, map[row]int{}
	for _, c := range r.clients {
		c.lease = byName[c.build.name]
		if c.lease == "" {
			// Killed before it registered, or tokend was down.
			if !c.noLease && !c.lethal() {
				t.Errorf("client %s ran under a lease, yet no tokend logged one of that name; output:\n%s", c.build.name, c.build.proc.Output())
			}
			continue
		}
		got := reclaimed[c.lease]
		for _, s := range c.sent {
			k := row{c.kind, s.sig, s.target}
			signals[k]++
			tokens[k] += got
		}
		e, _ := c.effect()
		switch {
		case e.loses && !c.noLease:
			lossy++
		case got > 0 && got <= r.savedGrants[c.lease]:
			// A tokend killed between taking tokens back and saving
			// that (or between saving a grant and making it) restarts
			// counting them out, the safe way round, and writes them off
			// once the build is gone: at most what the state file said
			// the lease had when tokend died.
			phantoms += got
			t.Logf("client %s (signals %v): %d tokens reclaimed that no signal lost, counted out by a restart", c.build.name, c.sent, got)
		case got > 0:
			t.Errorf("client %s (signals %v) could not lose tokens, yet tokend reclaimed %d of its lease %s, which the state file counted %d out at the kills of tokend", c.build.name, c.sent, got, c.lease, r.savedGrants[c.lease])
		}
		for _, s := range c.sent {
			if s.sig != syscall.SIGKILL || s.target != targetRoot || c.noLease {
				continue
			}
			k := r.runningAt(c, s)
			bounded++
			if got < k-1 {
				t.Errorf("client %s: its root %s was killed with SIGKILL running %d jobs, so holding %d tokens at least; tokend reclaimed %d", c.build.name, s.comm, k, k-1, got)
			}
		}
	}
	var rows []string
	for k, n := range signals {
		rows = append(rows, fmt.Sprintf("  %-8s %-7v to %-8s %3d sent, %3d tokens reclaimed from those leases", k.kind, k.sig, k.target, n, tokens[k]))
	}
	sort.Strings(rows)
	t.Logf("signals delivered, by client kind, signal and target:\n%s", strings.Join(rows, "\n"))
	t.Logf("%d leases, %d tokens reclaimed; %d clients could lose tokens, %d root SIGKILLs checked against the jobs they ran, %d phantom tokens from restarts",
		len(names), sum, lossy, bounded, phantoms)
}

// runningAt counts c's jobs that were running while s was sent: started
// before it and not ended by the time kill(2) returned.
func (r *chaosRun) runningAt(c *chaosClient, s sentSignal) int {
	run := c.build.run(r.t, r.log)
	started, ended := map[string]int64{}, map[string]int64{}
	for _, e := range run.Events {
		if e.Start {
			started[e.ID] = e.T
		} else {
			ended[e.ID] = e.T
		}
	}
	k := 0
	for id, at := range started {
		end, ok := ended[id]
		if at < s.before && (!ok || end > s.after) {
			k++
		}
	}
	return k
}

// checkConcurrency checks the jobs that ran at once against the budget,
// and that every client that was not killed succeeded and ran all its
// jobs.
func (r *chaosRun) checkConcurrency() {
	t := r.t
	all := r.log.Run(t)
	owner := func(id string) *chaosClient {
		for _, c := range r.clients {
			if strings.HasPrefix(id, c.build.prefix) {
				return c
			}
		}
		return nil
	}
	noLease, detached, jobs := 0, 0, 0
	for _, c := range r.clients {
		if c.noLease {
			noLease++
		}
		if e, _ := c.effect(); e.detaches {
			detached++
		}
		if !c.lethal() {
			if c.code != 0 {
				t.Errorf("client %s got no lethal signal (%v), yet exited %d; output:\n%s", c.build.name, c.sent, c.code, c.build.proc.Output())
			}
			c.build.run(t, r.log).Check(t, c.build.jobs)
		}
	}
	counted := all.Filter(func(id string) bool {
		c := owner(id)
		return c != nil && c.lease != "" && !c.noLease
	}).Cut(func(id string) (int64, bool) {
		if e, at := owner(id).effect(); e.detaches {
			return at, true
		}
		return 0, false
	})
	jobs = counted.Started()
	if bad := counted.Unfinished(); len(bad) > 0 {
		t.Errorf("jobs of builds that nothing detached from their lease never ended: %v", bad)
	}
	peak := counted.Peak()
	t.Logf("%d jobs started in all; %d counted against the budget (%d clients ran without a lease, %d were detached by a signal): peak %d of %d",
		all.Started(), jobs, noLease, detached, peak, chaosBudget)
	if peak > chaosBudget {
		t.Errorf("%d jobs ran at once under a budget of %d; then ran:\n%s\ncounted jobs:\n%s", peak, chaosBudget, r.atPeak(counted, owner), counted)
	}
	if jobs < chaosClients {
		t.Errorf("only %d jobs counted against the budget: the run measured too little", jobs)
	}
}

// atPeak says which clients ran the jobs of run's peak, and what they got.
func (r *chaosRun) atPeak(run buildtest.Run, owner func(id string) *chaosClient) string {
	running, peak := map[string]bool{}, map[string]bool{}
	for _, e := range run.Events {
		running[e.ID] = e.Start
		if !e.Start {
			delete(running, e.ID)
		}
		if len(running) > len(peak) {
			peak = maps.Clone(running)
		}
	}
	jobs := map[*chaosClient][]string{}
	for id := range peak {
		jobs[owner(id)] = append(jobs[owner(id)], id)
	}
	var lines []string
	for c, ids := range jobs {
		sort.Strings(ids)
		lines = append(lines, fmt.Sprintf("  %s (lease %s, signals %v): %v", c.build.name, c.lease, c.sent, ids))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// grepLines are the lines of out that contain s.
func grepLines(out, s string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
