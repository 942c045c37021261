package buildtest

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

//go:embed probe/main.go
var probeSource []byte

// Probe is the job program of buildtest's build graphs.
type Probe struct {
	// Path runs as a job: Path job -log LOG -id ID -sleep D [-gate FILE].
	Path string
	// RustcWrapper is Path under the name rustc-wrapper: cargo's
	// RUSTC_WRAPPER that logs each compilation (see CargoEnv).
	RustcWrapper string
}

var (
	probeOnce sync.Once
	probe     *Probe
	probeErr  error
)

// BuildProbe returns the probe, building it on first use. The binary is
// cached under the user's cache directory by a hash of its source, so it is
// built once per source version, not once per test binary.
func BuildProbe(t testing.TB) *Probe {
	t.Helper()
	probeOnce.Do(func() { probe, probeErr = buildProbe() })
	if probeErr != nil {
		t.Fatalf("build the buildtest probe: %v", probeErr)
	}
	return probe
}

func buildProbe() (*Probe, error) {
	sum := sha256.Sum256(append([]byte(runtime.Version()+"\n"), probeSource...))
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "tokend-buildtest", "probe-"+hex.EncodeToString(sum[:8]))
	p := &Probe{Path: filepath.Join(dir, "probe"), RustcWrapper: filepath.Join(dir, "rustc-wrapper")}
	if _, err := os.Stat(p.RustcWrapper); err == nil {
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Build in a private directory and rename into place, so that test
	// binaries building at the same time never see a partial file.
	work, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	files := map[string]string{
		"go.mod":  "module probe\n\ngo 1.21\n",
		"main.go": string(probeSource),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(work, name), []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", "probe", ".")
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-buildvcs=false", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	if err := os.Chmod(filepath.Join(work, "probe"), 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(work, "probe"), p.Path); err != nil {
		return nil, err
	}
	tmpLink := filepath.Join(work, "rustc-wrapper")
	if err := os.Symlink("probe", tmpLink); err != nil {
		return nil, err
	}
	if err := os.Rename(tmpLink, p.RustcWrapper); err != nil {
		return nil, err
	}
	return p, nil
}

// Job is the shell command line of one probe job.
func (p *Probe) Job(log, id string, sleep time.Duration) string {
	return fmt.Sprintf("%s job -log %s -id %s -sleep %s", shellQuote(p.Path), shellQuote(log), shellQuote(id), sleep)
}

// GatedJob is a job that, after sleeping, waits until the file gate exists.
func (p *Probe) GatedJob(log, id string, sleep time.Duration, gate string) string {
	return p.Job(log, id, sleep) + " -gate " + shellQuote(gate)
}

// CopyTo copies the probe into dir, for builds run by a user who cannot
// read the cache directory, and returns the copy.
func (p *Probe) CopyTo(t testing.TB, dir string) *Probe {
	t.Helper()
	b, err := os.ReadFile(p.Path)
	if err != nil {
		t.Fatal(err)
	}
	c := &Probe{Path: filepath.Join(dir, "probe"), RustcWrapper: filepath.Join(dir, "rustc-wrapper")}
	if err := os.WriteFile(c.Path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("probe", c.RustcWrapper); err != nil {
		t.Fatal(err)
	}
	return c
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=.,/:@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
