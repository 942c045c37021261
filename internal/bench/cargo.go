package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ripgrep is the Rust code base of the cargo scenario: Debian's source of
// ripgrep, whose Build-Depends are the librust-*-dev packages of its
// crates, so that it builds offline from Debian's cargo registry.
var ripgrep = DebSource{Name: "rust-ripgrep", Version: "13.0.0-4", Suite: "bookworm"}

// ripgrepCrates are the Debian packages that put ripgrep's dependencies,
// with theirs, into debianRegistry: its Build-Depends, its
// dev-dependencies (cargo resolves those too), and grep's pcre2 back end
// with the C library it links, for the pcre2 feature Debian builds with.
var ripgrepCrates = []string{
	"librust-bstr-dev", "librust-clap-2-dev", "librust-grep-dev", "librust-grep-searcher-dev",
	"librust-ignore-dev", "librust-lazy-static-dev", "librust-log-dev", "librust-num-cpus-dev",
	"librust-regex-dev", "librust-serde-json-dev", "librust-termcolor-dev",
	"librust-serde-dev", "librust-serde-derive-dev", "librust-walkdir-dev",
	"librust-grep-pcre2-dev", "libpcre2-dev", "pkg-config",
}

// debianRegistry is where Debian's librust-*-dev packages unpack their
// crates: a cargo directory source.
const debianRegistry = "/usr/share/cargo/registry"

// cargoHomeDir, inside the unpacked tree, is the CARGO_HOME of every cargo
// build: its config replaces crates.io with debianRegistry, and ~/.cargo
// is never read or written.
const cargoHomeDir = "tokend-bench-cargo-home"

// cargoConfig is the config.toml of cargoHomeDir.
func cargoConfig(registry string) string {
	return fmt.Sprintf("[source.crates-io]\nreplace-with = \"debian\"\n\n[source.debian]\ndirectory = %q\n\n[net]\noffline = true\n", registry)
}

// staleFeature is a line of ripgrep 13's Cargo.toml naming a feature the
// grep crate of Debian 12 (0.2.10) no longer has; cargo 1.95 refuses to
// resolve a manifest that names it even when it is not enabled. The
// feature is not built (Debian builds only pcre2), so dropping the line
// changes no code that is compiled.
const staleFeature = "simd-accel = [\"grep/simd-accel\"]\n"

// ripgrepFeatures are the features Debian's debian/rules builds with.
var ripgrepFeatures = []string{"pcre2"}

// ripgrepBuild is one release build of ripgrep alone, as measured here
// (cargo and rustc 1.95; rustc's max RSS and CPU from /usr/bin/time as
// RUSTC_WRAPPER). At -j1 (load 4 to 6 from other work): 92 rustc runs
// (build scripts and build-dependencies included), 156 s user and 35 s
// system CPU, 290 s wall; the largest rustc were clap 298 MiB (19 CPU-s),
// regex-syntax 282, serde 279 and rg itself 279 MiB (35 CPU-s, most of
// it LLVM code generation on threads that take jobserver tokens). At -j2
// (load 7 to 11): 206 CPU-s, 446 s wall, the same peaks within 5%, 483
// MiB at the peak of the build's memory cgroup (page cache included).
// rustc's RSS counts the shared text of librustc_driver, charged once.
var ripgrepBuild = CargoBuild{Features: ripgrepFeatures, Crates: 92, CPU: 191, PeakMiB: 298}

// CargoBuild is a package that cargo builds from a source tree instead of
// a generated Makefile; the measured figures are for the report.
type CargoBuild struct {
	Manifest string   // Cargo.toml of the unpacked tree
	Home     string   // CARGO_HOME: Debian's registry in place of crates.io
	Features []string // --features
	// Crates, CPU (user+system seconds) and PeakMiB (the largest rustc's
	// peak RSS) were measured on one build alone.
	Crates  int
	CPU     float64
	PeakMiB int
}

// args are cargo's arguments for a release build of c into target, as
// Debian builds it; the strategy adds -j or a jobserver.
func (c CargoBuild) args(target string) []string {
	a := []string{"build", "--release", "--offline", "--locked", "--manifest-path", c.Manifest, "--target-dir", target}
	if len(c.Features) > 0 {
		a = append(a, "--features", strings.Join(c.Features, ","))
	}
	return a
}

// cargoPackages are b's packages as builds of the tree at src by cargo.
// Each gets a target directory of its own in its package directory, as
// each Nix build has its own sandbox.
func cargoPackages(b *RealBuild, src string) []Package {
	var out []Package
	for _, rp := range b.Packages {
		c := *b.Cargo
		c.Manifest = filepath.Join(src, "Cargo.toml")
		c.Home = filepath.Join(src, cargoHomeDir)
		out = append(out, Package{Name: rp.Name, Cargo: &c})
	}
	return out
}

// prepareCargoTree makes the unpacked tree at src build offline against
// registry: its CARGO_HOME config, the manifest without staleFeature, and
// a Cargo.lock of the crates the registry has (upstream's lock names
// crates.io's versions). Each step leaves a prepared tree as it was, so
// running it again costs one offline resolution.
func prepareCargoTree(ctx context.Context, cargo, src, registry string, log io.Writer) error {
	home := filepath.Join(src, cargoHomeDir)
	if err := os.MkdirAll(home, 0o755); err != nil {
		return fmt.Errorf("cargo home: %w", err)
	}
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(cargoConfig(registry)), 0o644); err != nil {
		return fmt.Errorf("cargo home: %w", err)
	}
	manifest := filepath.Join(src, "Cargo.toml")
	m, err := os.ReadFile(manifest)
	if err != nil {
		return fmt.Errorf("cargo manifest: %w", err)
	}
	if fixed := strings.Replace(string(m), staleFeature, "", 1); fixed != string(m) {
		if err := os.WriteFile(manifest, []byte(fixed), 0o644); err != nil {
			return fmt.Errorf("cargo manifest: %w", err)
		}
	}
	lock := filepath.Join(src, "Cargo.lock")
	if err := os.Remove(lock); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("cargo lock: %w", err)
	}
	// The offline resolution fails, naming the crate, if a librust-*-dev
	// package is missing or too old.
	if err := runLogged(ctx, log, src, "env", "CARGO_HOME="+home, cargo, "generate-lockfile", "--offline", "--manifest-path", manifest); err != nil {
		return fmt.Errorf("resolve %s's crates offline from %s (a librust-*-dev package missing or of another version?): %w", filepath.Base(src), registry, err)
	}
	return nil
}
