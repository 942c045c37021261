package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name, file, wantErr string
		want                Config
	}{
		{name: "every key", file: "runtime_dir = \"/run/x\"\ntokens = 6\nlease_group = \"jobserver\"\nlog_level = \"debug\"\n",
			want: Config{RuntimeDir: "/run/x", Tokens: 6, LeaseGroup: "jobserver", LogLevel: "debug"}},
		{name: "defaults kept", file: "tokens = 2\n", want: Config{RuntimeDir: "/run/d", Tokens: 2, LogLevel: "info"}},
		{name: "unknown key", file: "tokenz = 2\n", wantErr: "unknown key tokenz"},
		{name: "wrong type", file: "tokens = \"two\"\n", wantErr: "tokens"},
		{name: "out of range", file: "tokens = 70000\n", wantErr: "tokens 70000"},
		{name: "relative dir", file: "runtime_dir = \"run\"\n", wantErr: "runtime_dir \"run\""},
		{name: "bad level", file: "log_level = \"loud\"\n", wantErr: "log_level \"loud\""},
		{name: "syntax", file: "tokens = \n", wantErr: "line 1"},
		{name: "memory controller keys", file: "memory_cgroup = \"/sys/fs/cgroup/memory/builds\"\nmemory_pressure = \"/sys/fs/cgroup/unified/builds/memory.pressure\"\n" +
			"lease_cgroups = \"off\"\nmemory_reserve = \"384MiB\"\nmemory_tick = \"500ms\"\ngrowth_interval = \"5s\"\ncpu_multiple = 2.0\njob_estimate = \"1.5GiB\"\n",
			want: Config{RuntimeDir: "/run/d", LogLevel: "info", MemoryCgroup: "/sys/fs/cgroup/memory/builds",
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
			got, err := Config{RuntimeDir: "/run/d", LogLevel: "info"}.LoadConfig(path)
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
