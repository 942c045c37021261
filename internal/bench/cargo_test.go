package bench

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func cargoScenario(t *testing.T) Scenario {
	t.Helper()
	for _, sc := range realOnly(t) {
		if sc.Real.Cargo != nil {
			return sc
		}
	}
	t.Fatal("no cargo scenario among the real ones")
	return Scenario{}
}

// Each strategy drives cargo as it drives make: -jN for the static ones,
// no -j under a jobserver (cargo would ignore it), tokenctl run around
// cargo for tokend; every build has its own target directory and the
// harness's CARGO_HOME, never ~/.cargo.
func TestCargoBuildCommand(t *testing.T) {
	sc := cargoScenario(t)
	pkgs := sc.Packages("/cache/rg")
	if len(pkgs) != 2 || pkgs[0].Name == pkgs[1].Name {
		t.Fatalf("packages %+v, want two builds of different names", pkgs)
	}
	bin := Binaries{Cargo: "/usr/bin/cargo", Tokenctl: "/bin/tokenctl", Make: "/bin/make"}
	const cargo = "/usr/bin/cargo build --release --offline --locked --manifest-path /cache/rg/Cargo.toml --target-dir /run/ripgrep-a/target --features pcre2"
	for _, tc := range []struct {
		st        Strategy
		makeflags string
		cmd, env  string
	}{
		{Strategy{Name: "static-j2", Kind: Static, N: 2}, "", cargo + " -j2", ""},
		{Strategy{Name: "serial", Kind: Serial, N: 1}, "", cargo + " -j1", ""},
		{Strategy{Name: "retry-j4", Kind: Retry, N: 4}, "", cargo + " -j4", ""},
		{Strategy{Name: "shared-2", Kind: Shared, N: 2}, " --jobserver-auth=fifo:/run/shared.fifo", cargo, "MAKEFLAGS= --jobserver-auth=fifo:/run/shared.fifo"},
		{Strategy{Name: "tokend", Kind: Tokend}, "tokend:/run/tokend.sock", "/bin/tokenctl --socket /run/tokend.sock run --name ripgrep-a -- " + cargo, ""},
	} {
		c := buildCommand(bin, tc.st, pkgs[0], "/run/ripgrep-a", tc.makeflags, "ENTER")
		if want := []string{"/bin/sh", "-c", "ENTER", "sh"}; !slices.Equal(c.Args[:4], want) {
			t.Fatalf("%s: %q, want it run by %q", tc.st.Name, c.Args, want)
		}
		if got := strings.Join(c.Args[4:], " "); got != tc.cmd {
			t.Errorf("%s:\n got %s\nwant %s", tc.st.Name, got, tc.cmd)
		}
		if !slices.Contains(c.Env, "CARGO_HOME=/cache/rg/"+cargoHomeDir) {
			t.Errorf("%s: environment lacks the harness's CARGO_HOME", tc.st.Name)
		}
		if tc.env != "" && !slices.Contains(c.Env, tc.env) {
			t.Errorf("%s: environment lacks %s", tc.st.Name, tc.env)
		}
		if slices.ContainsFunc(c.Env, func(kv string) bool { return tc.env == "" && strings.HasPrefix(kv, "MAKEFLAGS=") }) {
			t.Errorf("%s: a jobserver in the environment of a build that has none", tc.st.Name)
		}
	}
	dir := t.TempDir()
	if err := writePackage(dir, pkgs[0], Tools{}); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("a cargo package's directory holds %v, %v: want nothing but what cargo writes", ents, err)
	}
}

// The scenario is sized from the measured build: two builds' CPU time
// fit its timeout on 2 cores with room for a loaded machine, and the
// limit holds what a good strategy runs (a rustc per core) but not
// static -j2 per build (four of the largest rustc beside each other).
func TestCargoScenarioSized(t *testing.T) {
	sc := cargoScenario(t)
	b := sc.Real.Cargo
	var cpu float64
	for _, p := range sc.Packages("/src") {
		cpu += p.CPUSeconds()
	}
	if cpu != float64(len(sc.Real.Packages))*b.CPU || b.Crates == 0 || b.PeakMiB == 0 {
		t.Fatalf("%s: %.0f CPU-s over %d packages, %d crates, %d MiB: not the measured build", sc.Name, cpu, len(sc.Real.Packages), b.Crates, b.PeakMiB)
	}
	if wall := cpu / 2; 2*wall > sc.Timeout.Seconds() {
		t.Errorf("%s: %.0f s of work on 2 cores, timeout %v: want at least twice that", sc.Name, wall, sc.Timeout)
	}
	if j2 := 2 * sc.MaxJobs * b.PeakMiB; j2 <= sc.LimitMiB || 2*b.PeakMiB >= sc.LimitMiB {
		t.Errorf("%s: two rustc need %d MiB, -j2 per build %d MiB: want the %d MiB limit between", sc.Name, 2*b.PeakMiB, j2, sc.LimitMiB)
	}
}

// writeCrate writes version 0.1.0 of a crate named name, with the given
// [features], into a cargo directory source at registry.
func writeCrate(t *testing.T, registry, name, features string) {
	t.Helper()
	dir := filepath.Join(registry, name+"-0.1.0")
	if err := os.MkdirAll(filepath.Join(dir, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	for file, text := range map[string]string{
		"Cargo.toml":           "[package]\nname = \"" + name + "\"\nversion = \"0.1.0\"\nedition = \"2018\"\n\n[features]\n" + features,
		"src/lib.rs":           "pub fn one() -> u32 { 1 }\n",
		".cargo-checksum.json": `{"package":"0000000000000000000000000000000000000000000000000000000000000000","files":{}}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// prepareCargoTree makes a tree build offline against a directory
// source, with the real cargo: the manifest's feature of a dependency
// that the registry's version lacks (ripgrep 13's simd-accel of grep,
// gone from Debian 12's grep 0.2.10) is dropped, the upstream lock is
// replaced by one of the registry's crates, doing it again changes
// nothing, and cargo builds the tree offline from the registry. A
// registry without the crate is an error that names it.
func TestPrepareCargoTree(t *testing.T) {
	cargo, err := exec.LookPath("cargo")
	if err != nil {
		t.Skip("cargo not on PATH")
	}
	registry, src := t.TempDir(), t.TempDir()
	manifest := "[package]\nname = \"tool\"\nversion = \"1.0.0\"\nedition = \"2018\"\n\n[dependencies.grep]\nversion = \"0.1\"\n\n[features]\npcre2 = []\n" + staleFeature
	for file, text := range map[string]string{
		"Cargo.toml":  manifest,
		"src/main.rs": "fn main() { println!(\"{}\", grep::one()); }\n",
		"Cargo.lock":  "# upstream's, of crates.io's versions\nversion = 3\n",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, file)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, file), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := prepareCargoTree(ctx, cargo, src, registry, io.Discard); err == nil || !strings.Contains(err.Error(), registry) {
		t.Fatalf("a registry without the crate: %v, want an error naming the registry", err)
	}
	writeCrate(t, registry, "grep", "avx-accel = []\n")
	var locks []string
	for range 2 {
		if err := prepareCargoTree(ctx, cargo, src, registry, io.Discard); err != nil {
			t.Fatal(err)
		}
		lock, err := os.ReadFile(filepath.Join(src, "Cargo.lock"))
		if err != nil {
			t.Fatal(err)
		}
		locks = append(locks, string(lock))
	}
	if locks[0] != locks[1] || !strings.Contains(locks[0], "name = \"grep\"\nversion = \"0.1.0\"") {
		t.Errorf("locks of two preparations:\n%s\n%s\nwant the same, with the registry's grep 0.1.0", locks[0], locks[1])
	}
	m, err := os.ReadFile(filepath.Join(src, "Cargo.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(manifest, staleFeature, "", 1); string(m) != want {
		t.Errorf("manifest:\n%s\nwant:\n%s", m, want)
	}
	p := Package{Name: "tool", Cargo: &CargoBuild{Manifest: filepath.Join(src, "Cargo.toml"), Home: filepath.Join(src, cargoHomeDir)}}
	c := buildCommand(Binaries{Cargo: cargo}, Strategy{Kind: Static, N: 1}, p, t.TempDir(), "", `exec "$@"`)
	// No network: the build must come from the registry alone.
	c.Env = append(c.Env, "CARGO_HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("offline build from the registry: %v\n%s", err, out)
	}
}
