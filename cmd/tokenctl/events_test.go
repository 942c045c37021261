package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/buildtest"
)

// follower is a command whose output lines the test reads as they come.
type follower struct {
	lines chan string
}

func follow(t *testing.T, cmd *exec.Cmd) *follower {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	buildtest.Start(t, cmd)
	f := &follower{lines: make(chan string, 1000)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
		close(f.lines)
	}()
	t.Cleanup(func() {
		if strings.Contains(stderr.String(), "DATA RACE") {
			t.Errorf("%s had a data race:\n%s", cmd, stderr.String())
		}
	})
	return f
}

// await reads lines until one satisfies match, and returns it.
func (f *follower) await(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.After(testDeadline)
	var seen []string
	for {
		select {
		case l, ok := <-f.lines:
			if !ok {
				t.Fatalf("output ended before %s; saw:\n%s", what, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if match(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %s; saw:\n%s", what, strings.Join(seen, "\n"))
		}
	}
}

// Issue 12: tokenctl events streams tokend's decisions: the JSON lines
// carry every event from the first (--backlog) in order, and the human
// lines say the same in words; a budget set by an operator, a build's
// start, admission and end all appear.
func TestEventsFollow(t *testing.T) {
	d := startDaemon(t, t.TempDir(), 3)
	jsonLines := follow(t, exec.Command(d.tokenctl, "--socket", d.sock, "events", "--json", "--backlog"))
	human := follow(t, exec.Command(d.tokenctl, "--socket", d.sock, "events"))

	// The human follower skips what happened before it; setting budgets
	// until it reports one is how the test knows it listens.
	n := 4
	for listening := false; !listening; n++ {
		d.setBudget(t, n)
		timeout := time.After(3 * time.Second)
		for waiting := true; waiting && !listening; {
			select {
			case line := <-human.lines:
				listening = strings.Contains(line, "(operator)")
				t.Logf("human: %s", line)
			case <-timeout:
				waiting = false
			}
		}
		if n > 20 {
			t.Fatal("tokenctl events never reported a budget set by the operator")
		}
	}
	n-- // the last budget set
	b := &build{name: "evented", argv: []string{"true"}}
	b.start(t, d)
	for _, want := range []string{"evented started (lease ", "evented admitted after ", "evented ended: "} {
		t.Logf("human: %s", human.await(t, want, func(l string) bool { return strings.Contains(l, want) }))
	}

	var seq uint64
	kinds := map[string]bool{}
	for !kinds[api.EventEnd] {
		line := jsonLines.await(t, "an event", func(string) bool { return true })
		var e api.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not an event: %q: %v", line, err)
		}
		if e.Seq != seq+1 {
			t.Errorf("event %d after %d: tokenctl events --backlog skipped some", e.Seq, seq)
		}
		seq = e.Seq
		switch {
		case e.Kind == api.EventBudget && e.Seq == 1 && (e.Budget != 3 || e.Reason != "config"):
			t.Errorf("first event %+v, want the configured budget 3", e)
		case e.Kind == api.EventBudget && e.Reason == "operator" && e.Budget == n:
			kinds["operator"] = true
		case e.Kind == api.EventDecision && (e.FixedBy == "" || e.Budget < 1):
			t.Errorf("decision %+v, want what memory would allow and who fixes the budget", e)
		case e.Name == "evented":
			kinds[e.Kind] = true
		}
	}
	for _, k := range []string{"operator", api.EventStart, api.EventAdmit, api.EventEnd} {
		if !kinds[k] {
			t.Errorf("no %s event in the JSON stream", k)
		}
	}
	if err := b.proc.Wait(t.Context(), t); err != nil {
		t.Error(err)
	}
}

// The README's desktop notifier, run as it is written, with jq and a
// stand-in notify-send (there is no desktop here) that records what it
// was asked to show.
func TestREADMENotifier(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		buildtest.Missing(t, "jq (apt-get install jq)")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var script string
	for _, block := range strings.Split(string(readme), "```sh\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.Contains(block, "notify-send") && strings.Contains(block, "tokenctl events --json") {
			script = block
		}
	}
	if script == "" {
		t.Fatal("README shows no tokenctl events --json | ... notify-send pipeline")
	}
	d := startDaemon(t, t.TempDir(), 3)
	bin := t.TempDir()
	shown := filepath.Join(bin, "shown")
	writeFile(t, filepath.Join(bin, "notify-send"), fmt.Sprintf("#!/bin/sh\nprintf '%%s|%%s\\n' \"$1\" \"$2\" >> %s\n", shown))
	if err := os.Chmod(filepath.Join(bin, "notify-send"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(d.tokenctl, filepath.Join(bin, "tokenctl")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = buildtest.CleanEnv("PATH="+bin+":/usr/bin:/bin", "TOKEND_SOCKET="+d.sock)
	buildtest.Start(t, cmd)
	deadline := time.Now().Add(testDeadline)
	for n := 4; ; n++ {
		d.setBudget(t, n)
		time.Sleep(200 * time.Millisecond)
		b, _ := os.ReadFile(shown)
		if strings.Contains(string(b), fmt.Sprintf("tokend|budget %d → %d: operator\n", n-1, n)) {
			t.Logf("notify-send showed:\n%s", b)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the README's notifier never showed the budget set; it showed %q", b)
		}
	}
}
