package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/cgtest"
	"github.com/tokend/tokend/jobserver"
)

// tokendBinary builds this command once per test binary.
func tokendBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin, err := cgtest.BuildGo(filepath.Join("..", ".."), "./cmd/tokend", dir)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// killable is a tokend run by a test, to be killed with SIGKILL.
type killable struct {
	proc   *buildtest.Proc
	client *api.Client
}

func startKillable(t *testing.T, bin, dir string) *killable {
	t.Helper()
	p := buildtest.Start(t, exec.Command(bin, "--runtime-dir", dir, "--state-dir", filepath.Join(dir, "state"), "--tokens", "4", "--lease-group", "", "--lease-cgroups", "off", "--log-level", "debug"))
	k := &killable{proc: p, client: api.NewClient(api.SocketPath(dir))}
	k.wait(t, "tokend to answer", func(api.Status) bool { return true })
	return k
}

func (k *killable) wait(t *testing.T, what string, cond func(api.Status) bool) api.Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := k.client.Status(ctx)
		cancel()
		if err == nil && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v; tokend output:\n%s", what, err, k.proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (k *killable) kill9(t *testing.T) {
	t.Helper()
	if err := k.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-k.proc.Done()
}

// The kernel drops a pipe's bytes when its last descriptor closes, so a
// tokend killed with SIGKILL while no client held a lease's FIFO lost its
// free tokens (a restart counted them held by no one and wrote them off),
// and a make 4.4 opening the FIFO then blocked for ever in open(2) with no
// writer. tokend's FIFO holder keeps every FIFO open across the kill: at
// each point of a lease's life, a restarted tokend finds every token.
func TestTokensSurviveKill9(t *testing.T) {
	bin := tokendBinary(t)
	points := []struct {
		name string
		// atOnce kills tokend the moment the registration returns, while
		// the FIFO's descriptor may still be on its way to the holder.
		atOnce bool
		// before runs with the first tokend up and returns what runs
		// after the restart.
		before func(t *testing.T, k *killable, id, fifo string) (after func(t *testing.T))
	}{
		{"killed the moment registration returns", true, func(t *testing.T, k *killable, id, fifo string) func(*testing.T) { return nil }},
		{"granted, never opened", false, func(t *testing.T, k *killable, id, fifo string) func(*testing.T) { return nil }},
		{"a client came and went", false, func(t *testing.T, k *killable, id, fifo string) func(*testing.T) {
			c := dial(t, fifo)
			for _, s := range take(t, c, 2) {
				c.Release(s)
			}
			c.Close()
			return nil
		}},
		{"a client holds tokens across the kill", false, func(t *testing.T, k *killable, id, fifo string) func(*testing.T) {
			c := dial(t, fifo)
			slots := take(t, c, 2)
			return func(t *testing.T) {
				for _, s := range slots {
					c.Release(s)
				}
				c.Close()
			}
		}},
		{"ending, a client still holding", false, func(t *testing.T, k *killable, id, fifo string) func(*testing.T) {
			c := dial(t, fifo)
			slots := take(t, c, 1)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := k.client.End(ctx, id); err != nil {
				t.Fatal(err)
			}
			return func(t *testing.T) {
				for _, s := range slots {
					c.Release(s)
				}
				c.Close()
			}
		}},
	}
	for _, pt := range points {
		t.Run(pt.name, func(t *testing.T) {
			dir := t.TempDir()
			first := startKillable(t, bin, dir)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			reg, err := first.client.Register(ctx, api.RegisterRequest{Name: "survivor", OwnerPID: os.Getpid()})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if !pt.atOnce {
				first.wait(t, "3 tokens granted", func(st api.Status) bool { return st.Granted == 3 })
			}
			after := pt.before(t, first, reg.ID, reg.FIFO)
			first.kill9(t)

			// With tokend down, a make 4.4 opening the FIFO (read-only,
			// blocking) finds a writer and the free tokens.
			opened := make(chan error, 1)
			go func() {
				f, err := os.OpenFile(reg.FIFO, os.O_RDONLY, 0)
				if err == nil {
					f.Close()
				}
				opened <- err
			}()
			select {
			case err := <-opened:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("opening the fifo while tokend is down blocks: nobody holds a writer")
			}

			second := startKillable(t, bin, dir)
			if after != nil {
				after(t)
			}
			st := second.wait(t, "every token back in the pipe or the lease gone", func(st api.Status) bool {
				for _, l := range st.Leases {
					if l.ID == reg.ID {
						return !l.Ending && l.Held == 0 && l.Free == l.Granted
					}
				}
				return true
			})
			if st.ReclaimedTotal != 0 {
				t.Errorf("restarted tokend wrote off %d tokens as leaked; no client leaked any: %+v", st.ReclaimedTotal, st.Leases)
			}
			if st.InvariantViolations != 0 {
				t.Errorf("%d accounting errors: %s", st.InvariantViolations, st.LastViolation)
			}
			t.Logf("after the restart: granted %d, reclaimed %d, leases %d", st.Granted, st.ReclaimedTotal, len(st.Leases))
			second.proc.Signal(syscall.SIGTERM)
			<-second.proc.Done()
		})
	}
}

func dial(t *testing.T, fifo string) *jobserver.Client {
	t.Helper()
	c, err := jobserver.Dial(jobserver.FIFOAuth(fifo))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// take acquires the implicit slot and n tokens.
func take(t *testing.T, c *jobserver.Client, n int) []jobserver.Slot {
	t.Helper()
	var out []jobserver.Slot
	for range n + 1 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tok, err := c.Acquire(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tok)
	}
	return out
}
