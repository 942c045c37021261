package broker

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
)

// Config is tokend's configuration file (TOML). Every key has a command
// line flag of the same name with dashes; a flag given wins over the file.
type Config struct {
	// RuntimeDir holds the socket, the state file and the FIFOs.
	RuntimeDir string `toml:"runtime_dir"`
	// Tokens fixes the budget; 0 lets tokend choose it.
	Tokens int `toml:"tokens"`
	// LeaseGroup names the group whose members may register leases
	// (tokenctl run); "" allows root only.
	LeaseGroup string `toml:"lease_group"`
	// LogLevel is one of trace, debug, info, warn, error.
	LogLevel string `toml:"log_level"`
	// OOMScoreAdj is the oom_score_adj of every lease's processes, so the
	// kernel's OOM killer takes a build job before anything else; 0
	// leaves them alone.
	OOMScoreAdj int `toml:"oom_score_adj"`

	// The memory controller (package broker/control). A zero value means
	// the controller's embedded default.

	// MemoryCgroup is the memory domain: a cgroup v1 or v2 directory with
	// the memory controller; "" means the host (/proc/meminfo).
	MemoryCgroup string `toml:"memory_cgroup"`
	// MemoryPressure is the PSI file to read; "" means the domain's own
	// memory.pressure on v2, else that of the lease cgroups' parent on a
	// hybrid host, else /proc/pressure/memory.
	MemoryPressure string `toml:"memory_pressure"`
	// LeaseCgroups is the cgroup v2 directory under which tokend makes a
	// group per tokenctl lease; "off" makes none.
	LeaseCgroups string `toml:"lease_cgroups"`
	// MemoryReserve is headroom never handed out.
	MemoryReserve ByteSize `toml:"memory_reserve"`
	// MemoryTick is how often the controller samples and decides.
	MemoryTick time.Duration `toml:"memory_tick"`
	// GrowthInterval is the least time between two budget increases.
	GrowthInterval time.Duration `toml:"growth_interval"`
	// CPUMultiple caps the budget at this many jobs per usable CPU.
	CPUMultiple float64 `toml:"cpu_multiple"`
	// JobEstimate is the expected peak of a compile job nothing is known
	// about yet; linker jobs are expected at twice that.
	JobEstimate ByteSize `toml:"job_estimate"`
}

// ByteSize is a number of bytes, written as a string with an optional
// unit: "512MiB", "1.5GiB", "4096". Units are KiB, MiB, GiB, TiB (powers of
// 1024) and K, M, G, T as their shorthands.
type ByteSize uint64

var byteUnits = []struct {
	suffix string
	scale  float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// UnmarshalText parses a size such as "512MiB".
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	scale := 1.0
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, scale = strings.TrimSpace(num), u.scale
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v*scale >= 1<<63 {
		return fmt.Errorf("size %q: want a number of bytes with an optional unit, such as 512MiB or 1.5GiB", text)
	}
	*b = ByteSize(v * scale)
	return nil
}

// String writes the size in the largest unit it is a whole multiple of.
func (b ByteSize) String() string {
	for i := 3; i >= 0; i-- {
		if unit := uint64(byteUnits[i].scale); b != 0 && uint64(b)%unit == 0 {
			return strconv.FormatUint(uint64(b)/unit, 10) + byteUnits[i].suffix
		}
	}
	return strconv.FormatUint(uint64(b), 10)
}

// Set makes ByteSize a flag.Value.
func (b *ByteSize) Set(s string) error { return b.UnmarshalText([]byte(s)) }

// DefaultOOMScoreAdj puts build jobs ahead of everything a desktop runs
// in the OOM killer's order: the kernel scores a process by its share of
// memory in thousandths plus oom_score_adj, so a 1 GiB compile on a 32 GiB
// host scores about 31 on its own and a 4 GiB browser 125; +500 makes the
// compile about 530. Chromium gives its renderers 300 and up, so a
// foreground tab (300) still outranks nothing of a build, and background
// tabs (up to 1000) may go before a job. It is no kill switch: the largest
// job goes first among the jobs, as without it.
const DefaultOOMScoreAdj = 500

// DefaultConfig is what tokend runs with when nothing is configured.
func DefaultConfig() Config {
	return Config{RuntimeDir: api.DefaultRuntimeDir(), LogLevel: "info", OOMScoreAdj: DefaultOOMScoreAdj}
}

// LoadConfig reads the file at path over c. Unknown keys and bad values are
// errors that name the key.
func (c Config) LoadConfig(path string) (Config, error) {
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return c, fmt.Errorf("config %s: %s", path, perr.ErrorWithPosition())
		}
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown key %s; known keys are %s", path, strings.Join(keys, ", "), strings.Join(configKeys, ", "))
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

var configKeys = []string{
	"runtime_dir", "tokens", "lease_group", "log_level", "oom_score_adj", "memory_cgroup", "memory_pressure",
	"lease_cgroups", "memory_reserve", "memory_tick", "growth_interval", "cpu_multiple", "job_estimate",
}

// Validate checks every value, naming the key of the first bad one.
func (c Config) Validate() error {
	if c.RuntimeDir == "" || !strings.HasPrefix(c.RuntimeDir, "/") {
		return fmt.Errorf("runtime_dir %q: want an absolute path", c.RuntimeDir)
	}
	if c.Tokens < 0 || c.Tokens > 65535 {
		return fmt.Errorf("tokens %d: want 0 (tokend decides) to 65535", c.Tokens)
	}
	if c.OOMScoreAdj < 0 || c.OOMScoreAdj > 1000 {
		return fmt.Errorf("oom_score_adj %d: want 0 (leave build jobs alone) to 1000", c.OOMScoreAdj)
	}
	if hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("log_level %q: want trace, debug, info, warn or error", c.LogLevel)
	}
	for _, p := range []struct{ key, path string }{
		{"memory_cgroup", c.MemoryCgroup}, {"memory_pressure", c.MemoryPressure},
	} {
		if p.path != "" && !strings.HasPrefix(p.path, "/") {
			return fmt.Errorf("%s %q: want an absolute path, or none", p.key, p.path)
		}
	}
	if c.LeaseCgroups != "" && c.LeaseCgroups != "off" && !strings.HasPrefix(c.LeaseCgroups, "/") {
		return fmt.Errorf("lease_cgroups %q: want an absolute cgroup v2 directory, or \"off\"", c.LeaseCgroups)
	}
	if c.MemoryTick != 0 && (c.MemoryTick < 10*time.Millisecond || c.MemoryTick > 10*time.Second) {
		return fmt.Errorf("memory_tick %v: want 10ms to 10s", c.MemoryTick)
	}
	if c.GrowthInterval < 0 || c.GrowthInterval > time.Hour {
		return fmt.Errorf("growth_interval %v: want 0 (the default) to 1h", c.GrowthInterval)
	}
	if c.CPUMultiple < 0 || c.CPUMultiple > 64 {
		return fmt.Errorf("cpu_multiple %v: want 0 (the default) to 64", c.CPUMultiple)
	}
	return nil
}
