package version_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Each program answers --version with the version the build set, and
// --help with an example. The hook stays small: nix runs it for every
// build, so it links nothing beyond the standard library and tokend's own
// packages.
func TestProgramsSayTheirVersion(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	dir := t.TempDir()
	const v = "9.8.7-test"
	build := exec.Command(goBin, "build", "-o", dir+"/",
		"-ldflags", "-X github.com/tokend/tokend/internal/version.Version="+v,
		"github.com/tokend/tokend/cmd/tokend", "github.com/tokend/tokend/cmd/tokenctl", "github.com/tokend/tokend/cmd/tokend-nix-hook")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, out)
	}
	for _, prog := range []string{"tokend", "tokenctl", "tokend-nix-hook"} {
		out, err := exec.Command(filepath.Join(dir, prog), "--version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), prog+" "+v+" (go") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("%s --version: %v, %q; want one line %q", prog, err, out, prog+" "+v+" (go…)")
		}
		out, err = exec.Command(filepath.Join(dir, prog), "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Example") {
			t.Errorf("%s --help: %v; want exit 0 and an example:\n%s", prog, err, out)
		}
	}
	deps, err := exec.Command(goBin, "list", "-deps", "github.com/tokend/tokend/cmd/tokend-nix-hook").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(deps)) {
		first, _, _ := strings.Cut(pkg, "/")
		if strings.Contains(first, ".") && !strings.HasPrefix(pkg, "github.com/tokend/tokend/") {
			t.Errorf("tokend-nix-hook links %s; it must need nothing beyond the standard library", pkg)
		}
	}
}

// Without a version set at link time, the line still says which Go built
// it (and, for a build from a git checkout, which commit).
func TestDevelVersion(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "run", "github.com/tokend/tokend/cmd/tokend-nix-hook", "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "tokend-nix-hook devel (") || !strings.Contains(string(out), runtime.Version()) {
		t.Errorf("tokend-nix-hook --version: %v, %q; want devel with %s", err, out, runtime.Version())
	}
}
