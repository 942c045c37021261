package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker/control"
)

// tokendState is the state directory of a tokend run: empty for a cold
// run; for a warm one, holding the job history the cold run of the same
// scenario and repetition left (Main runs that first), whose lease names
// it returns.
func tokendState(work string, sc Scenario, st Strategy, rep int) (string, []string, error) {
	dir := func(name string) string {
		return filepath.Join(work, "state", fmt.Sprintf("%s-rep%d-%s", sc.Name, rep, name))
	}
	state := dir(st.Name)
	if err := os.RemoveAll(state); err != nil {
		return "", nil, fmt.Errorf("tokend state dir: %w", err)
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return "", nil, fmt.Errorf("tokend state dir: %w", err)
	}
	if !st.Warm {
		return state, nil, nil
	}
	hist, err := os.ReadFile(filepath.Join(dir(ColdName), control.HistoryFile))
	if err != nil {
		return "", nil, fmt.Errorf("history for %s of %s rep %d: the %s run left none: %w", st.Name, sc.Name, rep, ColdName, err)
	}
	// Only the names are read here; tokend reads the rest.
	var file struct {
		Users map[string]map[string]json.RawMessage `json:"users"`
	}
	if err := json.Unmarshal(hist, &file); err != nil {
		return "", nil, fmt.Errorf("history for %s: %w", st.Name, err)
	}
	var names []string
	for _, byName := range file.Users {
		for n := range byName {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if err := os.WriteFile(filepath.Join(state, control.HistoryFile), hist, 0o644); err != nil {
		return "", nil, fmt.Errorf("history for %s: %w", st.Name, err)
	}
	return state, names, nil
}

// tokend is a tokend started for one run.
type tokend struct {
	cmd      *exec.Cmd
	socket   string
	tokenctl string
	started  time.Time
	log      *os.File
}

// startTokend starts tokend on its defaults, but for st's job estimate, in
// its own runtime and state directories, outside the benchmark's cgroups
// (inside them if inside) but pointed at them where it has flags for that,
// and waits for its socket to answer.
func startTokend(ctx context.Context, bin Binaries, st Strategy, runtimeDir, stateDir string, lim *Limit, inside bool) (*tokend, error) {
	if err := os.MkdirAll(runtimeDir, 0o755); err != nil {
		return nil, fmt.Errorf("tokend runtime dir: %w", err)
	}
	logf, err := os.Create(runtimeDir + ".log")
	if err != nil {
		return nil, fmt.Errorf("tokend log: %w", err)
	}
	args := []string{"--runtime-dir", runtimeDir, "--state-dir", stateDir}
	if st.JobEstimateMiB > 0 {
		args = append(args, "--job-estimate", fmt.Sprintf("%dMiB", st.JobEstimateMiB))
	}
	for _, f := range bin.TokendCgroupFlags {
		switch f {
		case "memory-cgroup":
			args = append(args, "--"+f, lim.Mem)
		case "lease-cgroups":
			// Lease groups nest in the run's cgroup2 group, whose
			// pressure and CPU counters include its children; on a
			// hybrid host tokend reads pressure from their parent.
			args = append(args, "--"+f, lim.PSI)
		}
	}
	cmd := exec.Command(bin.Tokend, args...)
	if inside {
		// The shell execs tokend: its PID is tokend's.
		cmd = exec.Command("/bin/sh", append([]string{"-c", lim.Enter() + ` && exec "$@"`, "sh", bin.Tokend}, args...)...)
	}
	t := &tokend{cmd: cmd, socket: filepath.Join(runtimeDir, "tokend.sock"), tokenctl: bin.Tokenctl, started: time.Now(), log: logf}
	t.cmd.Stdout, t.cmd.Stderr = logf, logf
	t.cmd.Env = cleanEnv()
	if err := t.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start tokend: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		probe := exec.Command(bin.Tokenctl, "--socket", t.socket, "status", "--json")
		probe.Env = cleanEnv()
		if probe.Run() == nil {
			return t, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.Join(fmt.Errorf("tokend did not answer on %s within 10 s (log: %s.log)", t.socket, runtimeDir), ctx.Err(), t.stop(nil))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leaseSettle is how long tokend may take to end the leases of builds
// that have exited: it notices a dead owner within about a second.
// historySettle bounds the wait for it to learn from them: it does so at
// its next tick (250 ms by default), and a lease whose jobs were all too
// small to learn from never shows.
const (
	leaseSettle   = 10 * time.Second
	historySettle = 3 * time.Second
)

// stop waits for tokend to have ended every lease and recorded the
// packages named in its job history, then sends SIGTERM, waits up to 5 s,
// and kills. Stopped earlier, tokend would forget the last package's jobs,
// and a warm run would start without them.
func (t *tokend) stop(names []string) error {
	defer t.log.Close()
	settleErr := t.settle(names)
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- t.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			return errors.Join(settleErr, fmt.Errorf("tokend exited: %w", err))
		}
		return settleErr
	case <-time.After(5 * time.Second):
		_ = t.cmd.Process.Kill()
		<-exited
		return errors.Join(settleErr, errors.New("tokend ignored SIGTERM for 5 s; killed"))
	}
}

// settle waits until tokend lists no lease (an error past leaseSettle),
// then until its history has an entry updated since it started for each
// of names, or historySettle has passed.
func (t *tokend) settle(names []string) error {
	var st api.Status
	deadline := time.Now().Add(leaseSettle)
	for {
		err := t.query(&st, "status", "--json")
		if err == nil && len(st.Leases) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("tokend status before stopping it: %w (log: %s)", err, t.log.Name())
			}
			return fmt.Errorf("tokend still had %d leases %v after the builds ended (log: %s)", len(st.Leases), leaseSettle, t.log.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(historySettle)
	for len(names) > 0 && time.Now().Before(deadline) {
		var hist []api.HistoryEntry
		if t.query(&hist, "history", "--json") == nil {
			names = slices.DeleteFunc(names, func(n string) bool {
				return slices.ContainsFunc(hist, func(e api.HistoryEntry) bool { return e.Name == n && e.LastSeen.After(t.started) })
			})
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// query runs tokenctl against this tokend and decodes its JSON answer.
func (t *tokend) query(v any, args ...string) error {
	c := exec.Command(t.tokenctl, append([]string{"--socket", t.socket}, args...)...)
	c.Env = cleanEnv()
	out, err := c.Output()
	if err != nil {
		return fmt.Errorf("tokenctl %s: %w", strings.Join(args, " "), err)
	}
	return json.Unmarshal(out, v)
}

// procUsage is a live process's CPU time in seconds and peak RSS in MiB.
func procUsage(pid int) (cpu, rssMiB float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("tokend usage: %w", err)
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are fields 14 and 15 of the line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("tokend usage: short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("tokend usage: %w", err)
	}
	cpu = float64(ut+stime) / userHZ
	hwm, err := readKey(fmt.Sprintf("/proc/%d/status", pid), "VmHWM:")
	if err != nil {
		return 0, 0, fmt.Errorf("tokend usage: %w", err)
	}
	return cpu, float64(hwm) / 1024, nil
}

// keepLog copies the log at from to to.
func keepLog(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("keep tokend log: %w", err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return fmt.Errorf("keep tokend log: %w", err)
	}
	return nil
}
