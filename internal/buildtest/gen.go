package buildtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Job is one probe job of a build graph.
type Job struct {
	ID    string
	Sleep time.Duration
	// Gate, if set, is a file the job waits for after sleeping: it holds
	// its job slot until the test creates the file.
	Gate string
	// After lists jobs that must end before this one starts.
	After []string
}

// Independent is n jobs named prefix1..prefixN with no order between them.
func Independent(prefix string, n int, sleep time.Duration) []Job {
	jobs := make([]Job, n)
	for i := range jobs {
		jobs[i] = Job{ID: fmt.Sprintf("%s%d", prefix, i+1), Sleep: sleep}
	}
	return jobs
}

// Gated returns jobs with every job's Gate set to gate.
func Gated(jobs []Job, gate string) []Job {
	out := make([]Job, len(jobs))
	for i, j := range jobs {
		j.Gate = gate
		out[i] = j
	}
	return out
}

// OpenGate creates the gate file, releasing the jobs waiting for it.
func OpenGate(t testing.TB, gate string) {
	t.Helper()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (p *Probe) command(log *Log, j Job) string {
	if j.Gate != "" {
		return p.GatedJob(log.Path, j.ID, j.Sleep, j.Gate)
	}
	return p.Job(log.Path, j.ID, j.Sleep)
}

// WriteMakefile writes dir/Makefile whose default goal runs jobs, each a
// phony target whose recipe is the probe. It returns the file's path.
func WriteMakefile(t testing.TB, dir string, p *Probe, log *Log, jobs []Job) string {
	t.Helper()
	var b strings.Builder
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	fmt.Fprintf(&b, ".PHONY: all %s\nall: %s\n", strings.Join(ids, " "), strings.Join(ids, " "))
	for _, j := range jobs {
		fmt.Fprintf(&b, "%s: %s\n\t@%s\n", j.ID, strings.Join(j.After, " "), makeEscape(p.command(log, j)))
	}
	return writeFile(t, filepath.Join(dir, "Makefile"), b.String())
}

// WriteNinja writes dir/build.ninja whose default targets are jobs. Their
// outputs are never created, so every run runs them all. It returns the
// file's path.
func WriteNinja(t testing.TB, dir string, p *Probe, log *Log, jobs []Job) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("rule probe\n  command = $cmd\n  description = $out\n")
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
		fmt.Fprintf(&b, "build %s: probe", j.ID)
		if len(j.After) > 0 {
			fmt.Fprintf(&b, " || %s", strings.Join(j.After, " "))
		}
		fmt.Fprintf(&b, "\n  cmd = %s\n", ninjaEscape(p.command(log, j)))
	}
	fmt.Fprintf(&b, "default %s\n", strings.Join(ids, " "))
	return writeFile(t, filepath.Join(dir, "build.ninja"), b.String())
}

// WriteCargoWorkspace writes a cargo workspace in dir of n independent
// library crates named prefix1..prefixN, with no dependencies, so it builds
// --offline. Compiling crate X is logged as rustc:X (see CargoEnv). One
// codegen unit per crate keeps rustc from asking the jobserver for more
// threads. It returns the path of the workspace's Cargo.toml.
func WriteCargoWorkspace(t testing.TB, dir, prefix string, n int) string {
	t.Helper()
	var members []string
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s%d", prefix, i)
		members = append(members, fmt.Sprintf("%q", name))
		writeFile(t, filepath.Join(dir, name, "Cargo.toml"),
			fmt.Sprintf("[package]\nname = %q\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n", name))
		writeFile(t, filepath.Join(dir, name, "lib.rs"), fmt.Sprintf("pub fn id() -> u32 {\n    %d\n}\n", i))
	}
	return writeFile(t, filepath.Join(dir, "Cargo.toml"), fmt.Sprintf(`[workspace]
members = [%s]
resolver = "2"

[profile.dev]
codegen-units = 1
incremental = false
debug = false
`, strings.Join(members, ", ")))
}

// CargoEnv is what a cargo build of a WriteCargoWorkspace workspace needs
// in its environment: the probe as RUSTC_WRAPPER, logging to log and
// holding each compilation's slot for sleep (then until gate exists, if
// gate is not empty), and a private target directory.
func CargoEnv(p *Probe, log *Log, sleep time.Duration, gate, targetDir string) []string {
	env := []string{
		"RUSTC_WRAPPER=" + p.RustcWrapper,
		"BUILDTEST_LOG=" + log.Path,
		"BUILDTEST_SLEEP=" + sleep.String(),
		"CARGO_TARGET_DIR=" + targetDir,
		"CARGO_TERM_COLOR=never",
		"CARGO_INCREMENTAL=0",
		"CARGO_TERM_PROGRESS_WHEN=never",
	}
	if gate != "" {
		env = append(env, "BUILDTEST_GATE="+gate)
	}
	return env
}

// CargoBuildArgs are the arguments of an offline build of a whole workspace.
func CargoBuildArgs(manifest string) []string {
	return []string{"build", "--offline", "--workspace", "--manifest-path", manifest}
}

// Nested describes a recursive build for WriteNested.
type Nested struct {
	Ninja, Cargo string        // paths of the tools the top Makefile runs
	Jobs         int           // probe jobs in each sub-build, crates in the cargo one
	TopJobs      int           // probe jobs of the top make itself
	Sleep        time.Duration // how long every job runs
}

// WriteNested writes a recursive build into dir: a top Makefile whose
// recipes run a sub-make ($(MAKE) -C sub), ninja (-C ninja) and cargo
// (a workspace in cargo/), each marked with '+', beside TopJobs probe jobs
// of its own. Job IDs are prefixed make-, ninja-, rustc: and top-. Run the
// top make with the jobserver in MAKEFLAGS; the jobserver is all that
// limits the whole tree. It returns the path of the top Makefile.
func WriteNested(t testing.TB, dir string, p *Probe, log *Log, n Nested) string {
	t.Helper()
	WriteMakefile(t, filepath.Join(dir, "sub"), p, log, Independent("make-", n.Jobs, n.Sleep))
	WriteNinja(t, filepath.Join(dir, "ninja"), p, log, Independent("ninja-", n.Jobs, n.Sleep))
	manifest := WriteCargoWorkspace(t, filepath.Join(dir, "cargo"), "crate", n.Jobs)
	top := Independent("top-", n.TopJobs, n.Sleep)
	var b strings.Builder
	for _, kv := range CargoEnv(p, log, n.Sleep, "", filepath.Join(dir, "cargo", "target")) {
		name, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "export %s := %s\n", name, makeEscape(v))
	}
	ids := []string{"sub-make", "sub-ninja", "sub-cargo"}
	for _, j := range top {
		ids = append(ids, j.ID)
	}
	fmt.Fprintf(&b, ".PHONY: all %s\nall: %s\n", strings.Join(ids, " "), strings.Join(ids, " "))
	fmt.Fprintf(&b, "sub-make:\n\t+@$(MAKE) -s -C sub\n")
	fmt.Fprintf(&b, "sub-ninja:\n\t+@%s -C ninja\n", makeEscape(shellQuote(n.Ninja)))
	fmt.Fprintf(&b, "sub-cargo:\n\t+@%s\n", makeEscape(shellQuote(n.Cargo)+" "+shellJoin(append(CargoBuildArgs(manifest), "--quiet"))))
	for _, j := range top {
		fmt.Fprintf(&b, "%s:\n\t@%s\n", j.ID, makeEscape(p.command(log, j)))
	}
	return writeFile(t, filepath.Join(dir, "Makefile"), b.String())
}

func writeFile(t testing.TB, path, text string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func makeEscape(s string) string  { return strings.ReplaceAll(s, "$", "$$") }
func ninjaEscape(s string) string { return strings.ReplaceAll(s, "$", "$$") }
