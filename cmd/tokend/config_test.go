package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/buildtest"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name, file, wantErr string
		want                Config
	}{
		{name: "every key", file: "runtime_dir = \"/run/x\"\ntokens = 6\nlease_group = \"jobserver\"\nlog_level = \"debug\"\n",
			want: Config{RuntimeDir: "/run/x", StateDir: "/var/lib/d", Tokens: 6, LeaseGroup: "jobserver", LogLevel: "debug"}},
		{name: "defaults kept", file: "tokens = 2\n", want: Config{RuntimeDir: "/run/d", StateDir: "/var/lib/d", Tokens: 2, LogLevel: "info"}},
		{name: "unknown key", file: "tokenz = 2\n", wantErr: "unknown key tokenz"},
		{name: "wrong type", file: "tokens = \"two\"\n", wantErr: "tokens"},
		{name: "out of range", file: "tokens = 70000\n", wantErr: "tokens 70000"},
		{name: "relative dir", file: "runtime_dir = \"run\"\n", wantErr: "runtime_dir \"run\""},
		{name: "state dir", file: "state_dir = \"/srv/tokend\"\n", want: Config{RuntimeDir: "/run/d", StateDir: "/srv/tokend", LogLevel: "info"}},
		{name: "relative state dir", file: "state_dir = \"state\"\n", wantErr: "state_dir \"state\""},
		{name: "bad level", file: "log_level = \"loud\"\n", wantErr: "log_level \"loud\""},
		{name: "syntax", file: "tokens = \n", wantErr: "line 1"},
		{name: "memory controller keys", file: "memory_cgroup = \"/sys/fs/cgroup/memory/builds\"\nmemory_pressure = \"/sys/fs/cgroup/unified/builds/memory.pressure\"\n" +
			"lease_cgroups = \"off\"\nmemory_reserve = \"384MiB\"\nmemory_tick = \"500ms\"\ngrowth_interval = \"5s\"\ncpu_multiple = 2.0\njob_estimate = \"1.5GiB\"\n",
			want: Config{RuntimeDir: "/run/d", StateDir: "/var/lib/d", LogLevel: "info", MemoryCgroup: "/sys/fs/cgroup/memory/builds",
				MemoryPressure: "/sys/fs/cgroup/unified/builds/memory.pressure", LeaseCgroups: "off", MemoryReserve: 384 << 20,
				MemoryTick: 500 * time.Millisecond, GrowthInterval: 5 * time.Second, CPUMultiple: 2, JobEstimate: 1536 << 20}},
		{name: "bad size", file: "job_estimate = \"lots\"\n", wantErr: "job_estimate"},
		{name: "relative cgroup", file: "memory_cgroup = \"builds\"\n", wantErr: "memory_cgroup \"builds\""},
		{name: "tick out of range", file: "memory_tick = \"1ms\"\n", wantErr: "memory_tick 1ms"},
		{name: "negative cpu multiple", file: "cpu_multiple = -1.0\n", wantErr: "cpu_multiple -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			os.WriteFile(path, []byte(tt.file), 0o644)
			got, err := Config{RuntimeDir: "/run/d", StateDir: "/var/lib/d", LogLevel: "info"}.LoadConfig(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %v, want one naming %s and %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// A tokend run by a user other than root keeps its history where the XDG
// base directory spec puts state: $XDG_STATE_HOME, else ~/.local/state.
func TestDefaultStateDirOfAUser(t *testing.T) {
	if buildtest.RerunAsNobody(t) {
		return
	}
	if os.Geteuid() == 0 {
		if got := DefaultStateDir(); got != "/var/lib/tokend" {
			t.Errorf("root's state dir %q, want /var/lib/tokend", got)
		}
		return
	}
	t.Setenv("XDG_STATE_HOME", "/srv/state")
	if got := DefaultStateDir(); got != "/srv/state/tokend" {
		t.Errorf("with XDG_STATE_HOME: %q, want /srv/state/tokend", got)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := DefaultStateDir(); got != "/home/u/.local/state/tokend" {
		t.Errorf("without XDG_STATE_HOME: %q, want /home/u/.local/state/tokend", got)
	}
}
