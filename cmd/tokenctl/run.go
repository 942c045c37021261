package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/bytesize"
	"github.com/tokend/tokend/jobserver"
)

// runOptions are the flags of tokenctl run.
type runOptions struct {
	name, style string
	keepJobs    bool
	retryOOM    int
}

// runCommand runs a command under a lease and returns its exit status. If
// tokend cannot give a lease, the command runs unchanged: the broker being
// down must never fail a build. With --retry-oom N, a run that fails after
// tokend saw the OOM killer take a job of it is run again, up to N times,
// once memory fits that job alone: make, ninja and cargo resume where they
// stopped, and the new lease starts expecting jobs of that size.
func runCommand(c *api.Client, o runOptions, argv []string) int {
	if o.name == "" {
		o.name = filepath.Base(argv[0])
	}
	if o.retryOOM < 0 {
		fmt.Fprintf(os.Stderr, "tokenctl run: --retry-oom %d: want 0 (no retries) or more\n", o.retryOOM)
		return 2
	}
	style, err := chooseStyle(o.style, argv[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "tokenctl run:", err)
		return 2
	}
	for retry := 1; ; retry++ {
		code, killed := runOnce(c, o, style, argv)
		if code == 0 || killed.jobs == 0 || retry > o.retryOOM {
			return code
		}
		fmt.Fprintf(os.Stderr, "tokenctl: the OOM killer took %d process(es) of %s (the largest job at %s); running %s again once %s fits alone (retry %d of %d)\n",
			killed.jobs, o.name, bytesize.Human(killed.size), filepath.Base(argv[0]), bytesize.Human(killed.size), retry, o.retryOOM)
		awaitRoom(c, killed.size)
	}
}

// runOnce runs the command once under a lease of its own and returns its
// exit status and, with --retry-oom, the OOM kills tokend saw in it.
func runOnce(c *api.Client, o runOptions, style jobserver.Style, argv []string) (int, oomKilled) {
	name := o.name
	cmd := command(argv)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	lease, err := c.Register(ctx, api.RegisterRequest{Name: name, OwnerPID: os.Getpid(), Wait: true, NewCgroup: true})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tokenctl: %v; running %s without a lease\n", err, argv[0])
		return wait(cmd), oomKilled{}
	}
	if err := awaitAdmission(c, lease.ID); err != nil {
		fmt.Fprintf(os.Stderr, "tokenctl: %v; running %s without a lease\n", err, argv[0])
		return wait(cmd), oomKilled{}
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := c.End(ctx, lease.ID); err != nil {
			fmt.Fprintf(os.Stderr, "tokenctl: ending lease %s: %v (tokend ends it when it sees this process gone)\n", lease.ID, err)
		}
	}()
	if !o.keepJobs {
		// Only under a lease: without one the command runs as typed.
		forgiven := forgiveJobFlags(argv)
		if msg := forgiven.message(); msg != "" {
			fmt.Fprintln(os.Stderr, msg)
			cmd = command(forgiven.argv)
		}
	}
	raiseOOMScoreAdj(lease.OOMScoreAdj)
	auth := jobserver.FIFOAuth(lease.FIFO)
	if style == jobserver.StylePipe {
		// make 4.3 and gcc 12 know only inherited descriptors. A fresh
		// open gives this command its own file description, so the
		// O_NONBLOCK make 4.3 sets on it touches nobody else.
		f, err := os.OpenFile(lease.FIFO, os.O_RDWR, 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tokenctl: open lease fifo: %v; running %s without a lease\n", err, argv[0])
			return wait(cmd), oomKilled{}
		}
		cmd.ExtraFiles = []*os.File{f, f}
		auth = jobserver.PipeAuth(3, 4)
	}
	env := os.Environ()
	env = setEnv(env, "MAKEFLAGS", jobserver.WithAuth(os.Getenv("MAKEFLAGS"), auth))
	env = setEnv(env, "CARGO_MAKEFLAGS", jobserver.WithAuth(os.Getenv("CARGO_MAKEFLAGS"), auth))
	cmd.Env = env
	if lease.Cgroup != "" {
		intoCgroup(cmd, lease.Cgroup)
	}
	code := wait(cmd)
	if code == 0 || o.retryOOM == 0 {
		return code, oomKilled{}
	}
	return code, leaseOOMKills(c, lease.ID, time.Now())
}

func command(argv []string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd
}

// awaitAdmission waits until the lease may start its first job, saying
// once on stderr when that takes a while. tokend holds each request until
// the lease is admitted or a couple of seconds pass, so waiting costs
// neither side anything.
func awaitAdmission(c *api.Client, id string) error {
	told := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		l, err := c.AwaitAdmission(ctx, id)
		cancel()
		if err != nil {
			return fmt.Errorf("waiting for admission: %w", err)
		}
		if l.Admitted {
			return nil
		}
		if !told {
			fmt.Fprintln(os.Stderr, "tokenctl: waiting for a job slot; the host's budget is in use (tokenctl status)")
			told = true
		}
	}
}

// wait starts cmd, forwards the signals that would end tokenctl to it, and
// returns its exit status the way a shell reports it.
func wait(cmd *exec.Cmd) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	becomeSubreaper()
	cmd, err := start(cmd)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tokenctl run:", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
	}
	for _, f := range cmd.ExtraFiles {
		f.Close() // the child has its copies; ours would keep the fifo held
	}
	reaping, stopReaping := context.WithCancel(context.Background())
	defer stopReaping()
	go reapOrphans(reaping, cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			cmd.Process.Signal(sig)
		case err := <-done:
			return exitStatus(cmd, err)
		}
	}
}

func exitStatus(cmd *exec.Cmd, err error) int {
	if err == nil {
		return 0
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if cmd.ProcessState != nil {
		return cmd.ProcessState.ExitCode()
	}
	fmt.Fprintln(os.Stderr, "tokenctl run:", err)
	return 1
}

// chooseStyle picks the jobserver style for the command: the one the flag
// names, or for auto the one the command reads.
func chooseStyle(flagValue, command string) (jobserver.Style, error) {
	if flagValue != "auto" {
		return jobserver.ParseStyle(flagValue)
	}
	return jobserver.StyleFor(command), nil
}

func setEnv(env []string, key, value string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if len(kv) > len(key) && kv[:len(key)+1] == key+"=" {
			continue
		}
		out = append(out, kv)
	}
	return append(out, key+"="+value)
}
