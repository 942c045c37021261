package buildtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ToolsEnv names the directory .ci/tools.sh fills with make 4.4, ninja 1.13
// and a make-4.3 link.
const ToolsEnv = "TOKEND_TOOLS_BIN"

// Make44 returns the absolute path of GNU make 4.4.x, the first make with
// the fifo: jobserver.
func Make44(t testing.TB) string {
	t.Helper()
	return need(t, "make 4.4", func() (string, error) {
		return find([]string{"make"}, []string{"make"}, versionPrefix("GNU Make 4.4"))
	})
}

// Make43 returns the absolute path of GNU make 4.3 (Debian 12's), which
// knows only the R,W pipe jobserver.
func Make43(t testing.TB) string {
	t.Helper()
	return need(t, "make 4.3", func() (string, error) {
		return find([]string{"make-4.3"}, []string{"make-4.3", "make"}, versionPrefix("GNU Make 4.3"))
	})
}

// Ninja returns the absolute path of ninja 1.13 or newer, the first ninja
// with a jobserver client.
func Ninja(t testing.TB) string {
	t.Helper()
	return need(t, "ninja >= 1.13", func() (string, error) {
		return find([]string{"ninja"}, []string{"ninja"}, func(out string) error {
			return atLeast(out, `^(\d+)\.(\d+)`, 1, 13)
		})
	})
}

// Cargo returns the absolute path of cargo 1.69 or newer (the first to read
// fifo: jobservers). The rustc it runs must work too.
func Cargo(t testing.TB) string {
	t.Helper()
	return need(t, "cargo >= 1.69", func() (string, error) {
		var dirs []string
		if h := os.Getenv("CARGO_HOME"); h != "" {
			dirs = append(dirs, filepath.Join(h, "bin"))
		}
		if h, err := os.UserHomeDir(); err == nil {
			dirs = append(dirs, filepath.Join(h, ".cargo", "bin"))
		}
		check := func(out string) error { return atLeast(out, `^cargo (\d+)\.(\d+)`, 1, 69) }
		for _, d := range dirs {
			p := filepath.Join(d, "cargo")
			if _, err := os.Stat(p); err == nil {
				if err := checkVersion(p, check); err != nil {
					return "", err
				}
				return p, nil
			}
		}
		return find(nil, []string{"cargo"}, check)
	})
}

var (
	toolMu    sync.Mutex
	toolCache = map[string]toolResult{}
)

type toolResult struct {
	path string
	err  error
}

// need runs lookup once per test binary and fails or skips t if the tool is
// missing.
func need(t testing.TB, what string, lookup func() (string, error)) string {
	t.Helper()
	toolMu.Lock()
	r, ok := toolCache[what]
	if !ok {
		r.path, r.err = lookup()
		toolCache[what] = r
	}
	toolMu.Unlock()
	if r.err != nil {
		Missing(t, fmt.Sprintf("%s: %v", what, r.err))
	}
	return r.path
}

// Missing fails t under CI=true and skips it otherwise, telling how to
// install the real tools.
func Missing(t testing.TB, what string) {
	t.Helper()
	Require(t, false, fmt.Sprintf("%s; run `bash .ci/tools.sh` and export %s=<its last line>", what, ToolsEnv))
}

// find looks for the first of names in $TOKEND_TOOLS_BIN, then for the
// first of pathNames on $PATH, and checks its --version output.
func find(names, pathNames []string, check func(string) error) (string, error) {
	var tried []string
	if dir := os.Getenv(ToolsEnv); dir != "" {
		for _, n := range names {
			p := filepath.Join(dir, n)
			if _, err := os.Stat(p); err != nil {
				tried = append(tried, p)
				continue
			}
			p, err := filepath.Abs(p)
			if err != nil {
				return "", err
			}
			return p, checkVersion(p, check)
		}
	} else {
		tried = append(tried, "$"+ToolsEnv+" (unset)")
	}
	var lastErr error
	for _, n := range pathNames {
		p, err := exec.LookPath(n)
		if err != nil {
			tried = append(tried, n+" on $PATH")
			continue
		}
		if p, err = filepath.Abs(p); err != nil {
			return "", err
		}
		if err := checkVersion(p, check); err != nil {
			lastErr = err
			continue
		}
		return p, nil
	}
	if lastErr != nil {
		return "", lastErr
	}
	return "", fmt.Errorf("not found (tried %s)", strings.Join(tried, ", "))
}

func checkVersion(path string, check func(string) error) error {
	out, err := exec.Command(path, "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s --version: %v: %s", path, err, out)
	}
	if err := check(strings.TrimSpace(string(out))); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

func versionPrefix(prefix string) func(string) error {
	return func(out string) error {
		if !strings.HasPrefix(out, prefix) {
			first, _, _ := strings.Cut(out, "\n")
			return fmt.Errorf("version %q, want %s", first, prefix)
		}
		return nil
	}
}

func atLeast(out, pattern string, major, minor int) error {
	m := regexp.MustCompile(pattern).FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("unrecognised version %q", out)
	}
	ma, _ := strconv.Atoi(m[1])
	mi, _ := strconv.Atoi(m[2])
	if ma < major || ma == major && mi < minor {
		return fmt.Errorf("version %q, want >= %d.%d", out, major, minor)
	}
	return nil
}
