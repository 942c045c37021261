package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The hook runs synchronously before every Nix build, so what it links is
// what each build waits for: net/http and net/url alone, linked once through
// a method constant and a path escape, took the hook from 8.5 ms to 12 ms
// (an empty Go program: 6.2 ms; BenchmarkHookLatency, quiet). The daemon's
// libraries cost more still.
func TestHookLinksOnlyWhatItUses(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"net", "net/http", "net/url", "crypto/tls", "log",
		"github.com/hashicorp/go-hclog", "github.com/BurntSushi/toml",
		"github.com/prometheus/procfs", "github.com/tokend/tokend/broker",
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") && strings.HasPrefix(f, "github.com/") {
				t.Errorf("tokend-nix-hook links %s; it must stay out of the hook (see this test's comment)", d)
			}
		}
	}
	if len(deps) < 10 {
		t.Fatalf("go list -deps gave %d packages (%q): not a dependency list", len(deps), out)
	}
}
