package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
)

// lockedBuffer is tokend's log, written by its process and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// buildTokend builds this command into a directory removed when t ends.
func buildTokend(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "tokend")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// SIGHUP rereads the configuration file: a new budget applies at once, and
// a file that no longer checks out leaves tokend running as it was, saying
// why.
func TestSIGHUPReloadsTheConfiguration(t *testing.T) {
	bin := buildTokend(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "tokend.toml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runtimeDir := filepath.Join(dir, "rt")
	write(fmt.Sprintf("runtime_dir = %q\ntokens = 2\nlease_cgroups = \"off\"\n", runtimeDir))

	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "--config", config)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("tokend: %v\n%s", err, logs)
		}
	}()
	c := api.NewClient(api.SocketPath(runtimeDir))
	budget := func(what string, want int) {
		t.Helper()
		var st api.Status
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if st, err = c.Status(context.Background()); err == nil && st.Budget == want {
				if st.BudgetReason != "config" {
					t.Fatalf("%s: budget %d (%s), want the configuration's", what, st.Budget, st.BudgetReason)
				}
				return
			}
		}
		t.Fatalf("%s: budget %d, %v; want %d\n%s", what, st.Budget, err, want, logs)
	}
	budget("at start", 2)

	write(fmt.Sprintf("runtime_dir = %q\ntokens = 3\nlease_cgroups = \"off\"\n", runtimeDir))
	cmd.Process.Signal(syscall.SIGHUP)
	budget("after a reload", 3)

	write(fmt.Sprintf("runtime_dir = %q\ntokens = 70000\nlease_cgroups = \"off\"\n", runtimeDir))
	cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), "reload failed"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no word of a failed reload:\n%s", logs)
		}
	}
	if log := logs.String(); !strings.Contains(log, "tokens 70000") || !strings.Contains(log, config) {
		t.Errorf("the failed reload does not name the key and the file:\n%s", log)
	}
	budget("after a failed reload", 3)
}
