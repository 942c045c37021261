// Package termtest runs programs in a real terminal for tests: a tmux
// server of the test's own, keys sent the way a user types them, and the
// screen read back as text. tmux comes from Debian (.ci/tools.sh installs
// it).
package termtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/buildtest"
)

// deadline bounds every wait for the screen; screens change in
// milliseconds, so reaching it means the program did not do what the
// test waits for.
const deadline = 30 * time.Second

// Term is one tmux session running one program.
type Term struct {
	t      testing.TB
	tmux   string
	socket string
	conf   string
	env    []string
}

// Start runs argv in a new terminal of width×height cells, with env (nil:
// buildtest.CleanEnv()) added to the environment it starts in. The
// terminal and everything in it end with the test.
func Start(t testing.TB, width, height int, env []string, argv ...string) *Term {
	t.Helper()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		buildtest.Missing(t, "tmux (apt-get install tmux)")
	}
	dir := t.TempDir()
	tm := &Term{t: t, tmux: tmux, socket: filepath.Join(dir, "tmux.sock"), conf: filepath.Join(dir, "tmux.conf")}
	// The pane stays after the program exits, so its last screen and its
	// exit status can be read; no status line takes a row.
	if err := os.WriteFile(tm.conf, []byte("set -g remain-on-exit on\nset -g status off\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if env == nil {
		env = buildtest.CleanEnv()
	}
	args := []string{"new-session", "-d", "-s", "test", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height)}
	// The first command starts the server, whose environment every
	// session gets (tmux takes PATH from it whatever -e says).
	tm.env = env
	tm.run(append(append(args, "--"), argv...)...)
	t.Cleanup(func() { exec.Command(tm.tmux, "-S", tm.socket, "kill-server").Run() })
	return tm
}

func (tm *Term) run(args ...string) string {
	tm.t.Helper()
	cmd := exec.Command(tm.tmux, append([]string{"-S", tm.socket, "-f", tm.conf}, args...)...)
	cmd.Env = tm.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Type types text literally.
func (tm *Term) Type(text string) {
	tm.t.Helper()
	tm.run("send-keys", "-t", "test", "-l", text)
}

// Keys sends keys by tmux's names: "Enter", "Tab", "C-c", "q".
func (tm *Term) Keys(keys ...string) {
	tm.t.Helper()
	tm.run(append([]string{"send-keys", "-t", "test"}, keys...)...)
}

// Screen is what the terminal shows now, one line per row, trailing
// blanks cut.
func (tm *Term) Screen() string {
	tm.t.Helper()
	return tm.run("capture-pane", "-p", "-t", "test")
}

// WaitFor waits until the screen satisfies cond and returns it; it fails
// the test with the last screen if that does not happen.
func (tm *Term) WaitFor(what string, cond func(screen string) bool) string {
	tm.t.Helper()
	end := time.Now().Add(deadline)
	for {
		s := tm.Screen()
		if cond(s) {
			return s
		}
		if time.Now().After(end) {
			tm.t.Fatalf("terminal never showed %s; screen:\n%s", what, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitForText waits until the screen contains text.
func (tm *Term) WaitForText(text string) string {
	tm.t.Helper()
	return tm.WaitFor(fmt.Sprintf("%q", text), func(s string) bool { return strings.Contains(s, text) })
}

// Exited reports whether the program has ended, and its exit status.
func (tm *Term) Exited() (bool, int) {
	tm.t.Helper()
	var dead, status int
	fmt.Sscan(tm.run("display-message", "-p", "-t", "test", "#{pane_dead} #{pane_dead_status}"), &dead, &status)
	return dead == 1, status
}

// WaitExit waits until the program has ended and returns its exit status.
func (tm *Term) WaitExit() int {
	tm.t.Helper()
	end := time.Now().Add(deadline)
	for {
		if dead, status := tm.Exited(); dead {
			return status
		}
		if time.Now().After(end) {
			tm.t.Fatalf("the program did not exit; screen:\n%s", tm.Screen())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
