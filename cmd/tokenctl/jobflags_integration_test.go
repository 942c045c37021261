package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/jobserver"
)

// Issue 12: `tokenctl run -- make -j8` and `-- ninja -j8`, typed by habit,
// stay within the budget: tokenctl drops the -j8 and says so in one line.
// With --keep-jobs the same builds run 8 jobs at once, outside the budget,
// which is what the dropping prevents.
func TestHabitualJobsFlagStaysInTheBudget(t *testing.T) {
	make44, ninja := buildtest.Make44(t), buildtest.Ninja(t)
	p, log := buildtest.BuildProbe(t), buildtest.NewLog(t)
	const budget, jobs, sleep = 3, 16, 200 * time.Millisecond
	d := startDaemon(t, t.TempDir(), budget)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()

	makeDir, ninjaDir := t.TempDir(), t.TempDir()
	buildtest.WriteMakefile(t, makeDir, p, log, buildtest.Independent("mk-", jobs, sleep))
	buildtest.WriteNinja(t, ninjaDir, p, log, buildtest.Independent("ninja-", jobs, sleep))
	for _, c := range []struct {
		tool string
		argv []string
	}{
		{"make", []string{make44, "-s", "-j8", "-C", makeDir}},
		{"ninja", []string{ninja, "--quiet", "-C", ninjaDir, "-j", "8"}},
	} {
		for _, keep := range []bool{false, true} {
			os.Truncate(log.Path, 0)
			if c.tool == "ninja" {
				os.Remove(filepath.Join(ninjaDir, ".ninja_log")) // ninja would have nothing to do
			}
			args := []string{"--socket", d.sock, "run", "--name", c.tool}
			if keep {
				args = append(args, "--keep-jobs")
			}
			cmd := exec.Command(d.tokenctl, append(append(args, "--"), c.argv...)...)
			cmd.Env = buildtest.CleanEnv()
			var stderr strings.Builder
			cmd.Stderr = &stderr
			began := time.Now()
			proc := buildtest.Start(t, cmd)
			if err := proc.Wait(ctx, t); err != nil {
				t.Fatalf("%s (keep %v): %v; stderr:\n%s", c.tool, keep, err, stderr.String())
			}
			r := log.Run(t)
			r.Check(t, jobs)
			lines := tokenctlLines(stderr.String())
			t.Logf("%s, keep-jobs %v: peak %d under budget %d in %v; tokenctl said %q", c.tool, keep, r.Peak(), budget, time.Since(began).Round(time.Millisecond), lines)
			if keep {
				if r.Peak() <= budget || len(lines) != 0 {
					t.Errorf("%s --keep-jobs: peak %d, tokenctl said %q; want the -j8 kept (more than %d jobs at once) and nothing said", c.tool, r.Peak(), lines, budget)
				}
				continue
			}
			if r.Peak() > budget {
				t.Errorf("%s -j8 under tokenctl run: %d jobs at once under a budget of %d; log:\n%s", c.tool, r.Peak(), budget, r)
			}
			if len(lines) != 1 || !strings.Contains(lines[0], "dropped -j") || !strings.Contains(lines[0], "--keep-jobs") {
				t.Errorf("%s: tokenctl said %q, want one line saying it dropped the -j8 and how to keep it", c.tool, stderr.String())
			}
			if strings.Contains(stderr.String(), "forced in submake") {
				t.Errorf("%s left the jobserver: %s", c.tool, stderr.String())
			}
			d.waitIdle(t)
		}
	}
}

// The flags forgiveJobFlags keeps leave real make 4.4.1 and ninja 1.13 in
// an inherited jobserver, and each command line it changes did take the
// tool out of it: what the option tables say is what the tools do.
func TestForgivenFlagsMatchTheRealTools(t *testing.T) {
	make44, ninja := buildtest.Make44(t), buildtest.Ninja(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "Makefile"), "all x:\n\t@:\n")
	writeFile(t, filepath.Join(dir, "build.ninja"), "rule r\n  command = :\nbuild all: r\nbuild x: r\n")
	fifo, err := jobserver.Create(filepath.Join(dir, "jobserver.fifo"), jobserver.FIFOOptions{Mode: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	defer fifo.Remove()
	if err := fifo.Add(2); err != nil {
		t.Fatal(err)
	}
	env := buildtest.CleanEnv("MAKEFLAGS=" + jobserver.WithAuth("", jobserver.FIFOAuth(fifo.Path())))
	// inJobserver runs the command line and tells whether the tool used
	// the inherited jobserver.
	inJobserver := func(argv []string) bool {
		t.Helper()
		os.Remove(filepath.Join(dir, ".ninja_log"))
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", argv, err, out)
		}
		if filepath.Base(argv[0]) == "ninja" {
			return strings.Contains(string(out), "Jobserver mode detected")
		}
		return !strings.Contains(string(out), "forced in submake")
	}
	for tool, lines := range map[string][]string{
		make44: {"-j8", "-j 8 all", "-j", "-j all", "all -j8", "-sj8", "-kj 4 x", "--jobs 8", "--jobs=3 all", "-f Makefile -j2",
			"-l4", "--max-load 3", "-O -j2", "-s", "x all"},
		ninja: {"-j8", "-j 2 all", "all -j8", "-vj8", "-l 4", "-k 0 -j2", "all"},
	} {
		name := filepath.Base(tool)
		for _, line := range lines {
			argv := append([]string{tool}, strings.Fields(line)...)
			f := forgiveJobFlags(argv)
			if !inJobserver(f.argv) {
				t.Errorf("%s %s: forgiven to %q, which is still out of the jobserver", name, line, f.argv)
			}
			hasJ := strings.Contains(strings.Join(f.dropped, " "), "-j")
			if hasJ == inJobserver(argv) {
				t.Errorf("%s %s: dropped %q, but as typed it was in the jobserver: %v", name, line, f.dropped, !hasJ)
			}
		}
	}
}
