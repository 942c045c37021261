package main

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadConfig feeds configuration files to the loader: nothing panics,
// and an accepted file passes the checks and holds no NaN or infinity.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("tokens = 6\nlog_level = \"debug\"\n"))
	f.Add([]byte("cpu_multiple = nan\n"))
	f.Add([]byte("cpu_multiple = inf\nmemory_reserve = \"NaN\"\n"))
	f.Add([]byte("memory_reserve = \"1.5GiB\"\njob_estimate = \"-0\"\nmemory_tick = \"250ms\"\n"))
	f.Add([]byte("[x]\ny = 1\n"))
	path := filepath.Join(f.TempDir(), "config.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := DefaultConfig().LoadConfig(path)
		if err != nil {
			return
		}
		if math.IsNaN(c.CPUMultiple) || math.IsInf(c.CPUMultiple, 0) {
			t.Fatalf("accepted cpu_multiple %v from %q", c.CPUMultiple, data)
		}
		if err := c.validate(func(string) string { return "" }); err != nil {
			t.Fatalf("accepted a config that fails its checks: %v", err)
		}
	})
}
