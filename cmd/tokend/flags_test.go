package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// load parses args as tokend's command line and loads the configuration.
func load(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	o, err := parseFlags(args)
	if err != nil {
		return Config{}, err
	}
	return o.load()
}

func TestFlagsWinOverTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokend.toml")
	os.WriteFile(path, []byte("tokens = 6\nmemory_tick = \"500ms\"\njob_estimate = \"2GiB\"\n"), 0o644)
	c, err := load(t, "--config", path, "--tokens", "3", "--job-estimate", "1.5GiB", "--runtime-dir", "/run/x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Tokens != 3 || c.JobEstimate != 1536<<20 || c.MemoryTick != 500*time.Millisecond || c.RuntimeDir != "/run/x" || c.LogLevel != "info" {
		t.Fatalf("got %+v", c)
	}
}

// Every bad value is refused when tokend starts, naming the key, the flag
// and what it wants, wherever it came from.
func TestBadValuesNameKeyAndFlag(t *testing.T) {
	dir := t.TempDir()
	n := 0
	file := func(text string) string {
		n++
		path := filepath.Join(dir, fmt.Sprintf("%d-tokend.toml", n))
		os.WriteFile(path, []byte(text), 0o644)
		return path
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--job-estimate", "1MiB"}, []string{"flags:", "job_estimate 1MiB", "--job-estimate", "64MiB"}},
		{[]string{"--config", file("job_estimate = \"1MiB\"\n")}, []string{"tokend.toml", "job_estimate 1MiB", "--job-estimate", "64MiB"}},
		{[]string{"--cpu-multiple", "NaN"}, []string{"--cpu-multiple", "cpu_multiple", "finite"}},
		{[]string{"--cpu-multiple", "+Inf"}, []string{"--cpu-multiple", "cpu_multiple", "finite"}},
		{[]string{"--config", file("cpu_multiple = nan\n")}, []string{"tokend.toml", "cpu_multiple NaN", "--cpu-multiple", "want 0"}},
		{[]string{"--config", file("cpu_multiple = inf\n")}, []string{"tokend.toml", "cpu_multiple +Inf", "--cpu-multiple"}},
		{[]string{"--memory-reserve", "NaNMiB"}, []string{"--memory-reserve", "memory_reserve", "512MiB"}},
		{[]string{"--config", file("memory_reserve = \"infGiB\"\n")}, []string{"tokend.toml", "memory_reserve", "--memory-reserve"}},
		{[]string{"--memory-tick", "20s"}, []string{"flags:", "memory_tick 20s", "--memory-tick", "10ms to 10s"}},
		{[]string{"--tokens", "70000"}, []string{"flags:", "tokens 70000", "--tokens", "65535"}},
		{[]string{"--oom-score-adj", "-5"}, []string{"flags:", "oom_score_adj -5", "--oom-score-adj", "1000"}},
		{[]string{"--lease-cgroups", "tokend"}, []string{"flags:", `lease_cgroups "tokend"`, "--lease-cgroups", `"off"`}},
		{[]string{"--config", file("tokens = 2\n"), "--tokens", "x"}, []string{"--tokens", "tokens", "invalid syntax"}},
	} {
		_, err := load(t, tc.args...)
		if err == nil {
			t.Errorf("%q: accepted", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %v; want it to say %q", tc.args, err, w)
			}
		}
	}
}

// A bad value in the file that a flag overrides is not in the
// configuration tokend runs with, so it is not an error.
func TestFlagOverridesABadFileValue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokend.toml")
	os.WriteFile(path, []byte("job_estimate = \"1MiB\"\n"), 0o644)
	c, err := load(t, "--config", path, "--job-estimate", "1GiB")
	if err != nil || c.JobEstimate != 1<<30 {
		t.Fatalf("%+v, %v; want job_estimate 1GiB", c, err)
	}
}
