package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DebSource is one Debian source package at a pinned version, so that every
// machine compiles the same code. Suite is the release that carries that
// version; it need not be the host's.
type DebSource struct {
	Name, Version, Suite string
}

// upstream is the version without its Debian revision: the directory
// dpkg-source unpacks into is NAME-UPSTREAM.
func (s DebSource) upstream() string {
	v, _, _ := strings.Cut(s.Version, "-")
	if _, after, ok := strings.Cut(v, ":"); ok {
		v = after
	}
	return v
}

// readyStamp marks an unpacked source tree as complete: a fetch that was
// interrupted leaves no stamp, and the next one starts over.
const readyStamp = ".tokend-bench-ready"

// BenchCache is where fetched sources are kept between invocations:
// $XDG_CACHE_HOME/tokend-bench, or ~/.cache/tokend-bench.
func BenchCache() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache directory for sources: %w; set XDG_CACHE_HOME", err)
	}
	return filepath.Join(d, "tokend-bench"), nil
}

// CachedSource is the unpacked tree of s under cache, if a fetch completed.
func CachedSource(cache string, s DebSource) (string, bool) {
	dir := filepath.Join(cache, "src", s.Name+"-"+s.upstream())
	_, err := os.Stat(filepath.Join(dir, readyStamp))
	return dir, err == nil
}

// FetchSource returns the unpacked tree of s under cache, downloading it
// from Debian's archive with apt-get and unpacking it with dpkg-source the
// first time. apt runs on a configuration of its own under cache (only
// deb-src of s.Suite), so the host's sources and lists are left alone.
func FetchSource(ctx context.Context, cache string, s DebSource, log io.Writer) (string, error) {
	dir, ok := CachedSource(cache, s)
	if ok {
		return dir, nil
	}
	if err := EnsureDebs(ctx, log, "dpkg-dev"); err != nil {
		return "", err
	}
	apt := filepath.Join(cache, "apt")
	if err := os.MkdirAll(filepath.Join(apt, "lists", "partial"), 0o755); err != nil {
		return "", fmt.Errorf("apt directory: %w", err)
	}
	sources := fmt.Sprintf("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n", s.Suite)
	if err := os.WriteFile(filepath.Join(apt, "src.sources"), []byte(sources), 0o644); err != nil {
		return "", fmt.Errorf("apt sources: %w", err)
	}
	aptArgs := []string{"-o", "Dir::Etc::SourceList=/dev/null", "-o", "Dir::Etc::SourceParts=" + apt, "-o", "Dir::State::Lists=" + filepath.Join(apt, "lists")}
	dl, err := os.MkdirTemp(filepath.Join(cache, "apt"), "download-")
	if err != nil {
		return "", fmt.Errorf("download dir: %w", err)
	}
	defer os.RemoveAll(dl)
	fmt.Fprintf(log, "tokend-bench: fetching Debian source %s %s (%s) into %s\n", s.Name, s.Version, s.Suite, dir)
	get := func() error {
		return runLogged(ctx, log, dl, "apt-get", append(aptArgs, "source", "--download-only", s.Name+"="+s.Version)...)
	}
	if err := get(); err != nil {
		// The private lists are missing or stale: read them once more.
		if err := runLogged(ctx, log, "", "apt-get", append(aptArgs, "update")...); err != nil {
			return "", fmt.Errorf("apt-get update for deb-src %s: %w", s.Suite, err)
		}
		if err := get(); err != nil {
			return "", fmt.Errorf("download Debian source %s=%s: %w (is %s still in %s?)", s.Name, s.Version, err, s.Version, s.Suite)
		}
	}
	dscs, _ := filepath.Glob(filepath.Join(dl, "*.dsc"))
	if len(dscs) != 1 {
		return "", fmt.Errorf("download Debian source %s=%s: want one .dsc in %s, found %d", s.Name, s.Version, dl, len(dscs))
	}
	unpacked := filepath.Join(dl, "tree")
	if err := runLogged(ctx, log, dl, "dpkg-source", "-x", dscs[0], unpacked); err != nil {
		return "", fmt.Errorf("unpack %s: %w", dscs[0], err)
	}
	if err := os.WriteFile(filepath.Join(unpacked, readyStamp), []byte(s.Name+" "+s.Version+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("mark %s ready: %w", s.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("source dir: %w", err)
	}
	// An incomplete tree from an interrupted fetch has no stamp: replace it.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("clear %s: %w", dir, err)
	}
	if err := os.Rename(unpacked, dir); err != nil {
		return "", fmt.Errorf("move source into the cache: %w", err)
	}
	return dir, nil
}

// EnsureDebs installs those of the Debian packages that are not installed,
// with apt-get; installed ones cost one dpkg-query.
func EnsureDebs(ctx context.Context, log io.Writer, pkgs ...string) error {
	var missing []string
	for _, p := range pkgs {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), " installed") {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Fprintf(log, "tokend-bench: installing %s\n", strings.Join(missing, " "))
	install := func() error {
		return runLogged(ctx, log, "", "apt-get", append([]string{"install", "-y", "--no-install-recommends"}, missing...)...)
	}
	if install() == nil {
		return nil
	}
	if err := runLogged(ctx, log, "", "apt-get", "update"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	if err := install(); err != nil {
		return fmt.Errorf("install %s (needs root and Debian's archive): %w", strings.Join(missing, " "), err)
	}
	return nil
}

// runLogged runs a setup command in dir, its output to log; the error
// carries the output's last lines.
func runLogged(ctx context.Context, log io.Writer, dir, name string, args ...string) error {
	var out strings.Builder
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = dir
	c.Stdout, c.Stderr = io.MultiWriter(log, &out), io.MultiWriter(log, &out)
	c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if err := c.Run(); err != nil {
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		return errors.Join(fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err), errors.New(strings.Join(lines[max(0, len(lines)-5):], "\n")))
	}
	return nil
}
