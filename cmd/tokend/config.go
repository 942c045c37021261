package main

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/broker/control"
	"github.com/tokend/tokend/internal/bytesize"
	"github.com/tokend/tokend/jobserver"
)

// Config is tokend's configuration. Its keys, the flags that set them and
// their checks are the table settings; a flag given wins over the file.
type Config struct {
	RuntimeDir  string
	StateDir    string
	Tokens      int
	LeaseGroup  string
	LogLevel    string
	OOMScoreAdj int
	// ShareGrace is how long a lease may keep more than its share while
	// another waits before tokend reports it, and reissues the tokens it
	// keeps without running jobs; 0 means the broker's default.
	ShareGrace time.Duration
	// The memory controller (package broker/control). A zero value means
	// the controller's embedded default.
	MemoryCgroup   string
	MemoryPressure string
	LeaseCgroups   string
	MemoryReserve  bytesize.Size
	MemoryTick     time.Duration
	GrowthInterval time.Duration
	CPUMultiple    float64
	JobEstimate    bytesize.Size
	// MetricsListen is a TCP address to serve Prometheus metrics on too;
	// "" serves them on the control socket only.
	MetricsListen string
}

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
	return Config{RuntimeDir: api.DefaultRuntimeDir(), StateDir: DefaultStateDir(), LogLevel: "info", OOMScoreAdj: DefaultOOMScoreAdj}
}

// DefaultStateDir is where tokend keeps what must survive a reboot when
// not told otherwise: /var/lib/tokend for root, $XDG_STATE_HOME/tokend
// (~/.local/state/tokend) for others; "" when there is no home to find.
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/tokend"
	}
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "tokend")
	}
	if home, err := os.UserHomeDir(); err == nil && filepath.IsAbs(home) {
		return filepath.Join(home, ".local", "state", "tokend")
	}
	return ""
}

// setting is one key of the configuration. Its flag is the key with
// dashes for underscores.
type setting struct {
	key   string
	usage string
	// field is the field of c the key sets: a *string, *int, *float64,
	// *time.Duration or *bytesize.Size.
	field func(c *Config) any
	// check says what the value wants when it is wrong, "" when it is not.
	check func(c Config) string
}

func (s setting) flag() string { return strings.ReplaceAll(s.key, "_", "-") }

// settings is every key, in the order --help lists them.
var settings = []setting{
	{"runtime_dir", "directory for the socket, state and FIFOs",
		func(c *Config) any { return &c.RuntimeDir },
		func(c Config) string { return absolute(c.RuntimeDir, "want an absolute path") }},
	{"state_dir", "directory for what outlives a reboot: the job history",
		func(c *Config) any { return &c.StateDir },
		func(c Config) string {
			return absolute(c.StateDir, "want an absolute path (with no $HOME, set it, or $XDG_STATE_HOME)")
		}},
	{"tokens", "fix the budget at N jobs; 0 lets tokend decide",
		func(c *Config) any { return &c.Tokens },
		func(c Config) string {
			return within(c.Tokens >= 0 && c.Tokens <= jobserver.MaxTokens, fmt.Sprintf("want 0 (tokend decides) to %d", jobserver.MaxTokens))
		}},
	{"lease_group", `group whose members may register leases; "" allows root only`,
		func(c *Config) any { return &c.LeaseGroup }, nil},
	{"log_level", "trace, debug, info, warn or error",
		func(c *Config) any { return &c.LogLevel },
		func(c Config) string {
			return within(hclog.LevelFromString(c.LogLevel) != hclog.NoLevel, "want trace, debug, info, warn or error")
		}},
	{"oom_score_adj", "oom_score_adj of build jobs, 0 to 1000; 0 leaves them alone",
		func(c *Config) any { return &c.OOMScoreAdj },
		func(c Config) string {
			return within(c.OOMScoreAdj >= 0 && c.OOMScoreAdj <= 1000, "want 0 (leave build jobs alone) to 1000")
		}},
	{"share_grace", "how long a build may keep more than its share while another waits before tokend reports it and reissues the tokens it keeps without running jobs; default " + broker.DefaultShareGrace.String(),
		func(c *Config) any { return &c.ShareGrace },
		func(c Config) string {
			return within(c.ShareGrace >= 0 && c.ShareGrace <= broker.MaxShareGrace,
				fmt.Sprintf("want 0 (the default, %v) to %v", broker.DefaultShareGrace, broker.MaxShareGrace))
		}},
	{"memory_cgroup", "memory domain: a v1 or v2 memory cgroup directory; default the host",
		func(c *Config) any { return &c.MemoryCgroup },
		func(c Config) string { return absoluteOrNone(c.MemoryCgroup, "want an absolute path, or none") }},
	{"memory_pressure", "PSI memory file to read; default chosen from the domain",
		func(c *Config) any { return &c.MemoryPressure },
		func(c Config) string { return absoluteOrNone(c.MemoryPressure, "want an absolute path, or none") }},
	{"lease_cgroups", `cgroup v2 directory for the tokenctl leases' groups, or "off"`,
		func(c *Config) any { return &c.LeaseCgroups },
		func(c Config) string {
			if c.LeaseCgroups == "off" {
				return ""
			}
			return absoluteOrNone(c.LeaseCgroups, `want an absolute cgroup v2 directory, or "off"`)
		}},
	{"memory_reserve", "headroom never handed out, such as 512MiB; default 512MiB, at most 1/8 of the domain",
		func(c *Config) any { return &c.MemoryReserve }, nil},
	{"memory_tick", "how often the memory controller decides; default " + control.DefaultTick.String(),
		func(c *Config) any { return &c.MemoryTick },
		func(c Config) string {
			return within(c.MemoryTick == 0 || c.MemoryTick >= control.MinTick && c.MemoryTick <= control.MaxTick,
				fmt.Sprintf("want %v to %v, or 0 for the default %v", control.MinTick, control.MaxTick, control.DefaultTick))
		}},
	{"growth_interval", "least time between budget increases; default " + control.DefaultGrowthInterval.String(),
		func(c *Config) any { return &c.GrowthInterval },
		func(c Config) string {
			return within(c.GrowthInterval >= 0 && c.GrowthInterval <= control.MaxGrowthInterval,
				fmt.Sprintf("want 0 (the default, %v) to %v", control.DefaultGrowthInterval, control.MaxGrowthInterval))
		}},
	{"cpu_multiple", "cap the budget at this many jobs per CPU; default " + strconv.FormatFloat(control.DefaultCPUMultiple, 'g', -1, 64),
		func(c *Config) any { return &c.CPUMultiple },
		func(c Config) string {
			return within(c.CPUMultiple >= 0 && c.CPUMultiple <= control.MaxCPUMultiple,
				fmt.Sprintf("want 0 (the default, %g) to %d", control.DefaultCPUMultiple, control.MaxCPUMultiple))
		}},
	{"job_estimate", "expected peak of an unknown compile job, such as 1GiB; a link's is twice that",
		func(c *Config) any { return &c.JobEstimate },
		func(c Config) string {
			return within(c.JobEstimate == 0 || c.JobEstimate >= control.MinJobEstimate,
				fmt.Sprintf("want at least %v, or 0 for the default %v", bytesize.Size(control.MinJobEstimate), bytesize.Size(control.DefaultJobEstimate)))
		}},
	{"metrics_listen", `TCP address to serve Prometheus metrics on too, such as 127.0.0.1:9464; "" only on the control socket`,
		func(c *Config) any { return &c.MetricsListen },
		func(c Config) string {
			if c.MetricsListen == "" {
				return ""
			}
			_, port, err := net.SplitHostPort(c.MetricsListen)
			_, perr := strconv.ParseUint(port, 10, 16) // 0: any free port, which the log names
			return within(err == nil && perr == nil, `want HOST:PORT such as 127.0.0.1:9464 or [::1]:9464, or "" for none`)
		}},
}

func within(ok bool, want string) string {
	if ok {
		return ""
	}
	return want
}

func absolute(path, want string) string { return within(filepath.IsAbs(path), want) }

func absoluteOrNone(path, want string) string {
	return within(path == "" || filepath.IsAbs(path), want)
}

// lookup is the setting of a key.
func lookup(key string) (setting, bool) {
	i := slices.IndexFunc(settings, func(s setting) bool { return s.key == key })
	if i < 0 {
		return setting{}, false
	}
	return settings[i], true
}

func keys() []string {
	out := make([]string, len(settings))
	for i, s := range settings {
		out[i] = s.key
	}
	return out
}

// LoadConfig reads the file at path over c and checks the result. Unknown
// keys and bad values are errors that name the file, the key and its flag.
func (c Config) LoadConfig(path string) (Config, error) {
	if err := c.decodeFile(path); err != nil {
		return c, err
	}
	return c, c.validate(func(string) string { return "config " + path + ": " })
}

// decodeFile reads the file at path over c.
func (c *Config) decodeFile(path string) error {
	var file map[string]toml.Primitive
	md, err := toml.DecodeFile(path, &file)
	if err != nil {
		var perr toml.ParseError
		// ErrorWithPosition indexes lines[Line-1]: toml v1.6.0 reports
		// line 0 for some inputs ("\"\r\n", found by FuzzLoadConfig) and
		// then panics there.
		if errors.As(err, &perr) && perr.Position.Line >= 1 {
			return fmt.Errorf("config %s: %s", path, perr.ErrorWithPosition())
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	var unknown []string
	for key, value := range file {
		s, ok := lookup(key)
		if !ok {
			unknown = append(unknown, key)
			continue
		}
		if err := md.PrimitiveDecode(value, s.field(c)); err != nil {
			return fmt.Errorf("config %s: %s (flag --%s): %w", path, key, s.flag(), err)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("config %s: unknown key %s; known keys are %s", path, strings.Join(unknown, ", "), strings.Join(keys(), ", "))
	}
	return nil
}

// validate checks every value once, naming the key and its flag of the
// first bad one after where its value came from.
func (c Config) validate(source func(key string) string) error {
	for _, s := range settings {
		if s.check == nil {
			continue
		}
		if want := s.check(c); want != "" {
			return fmt.Errorf("%s%s %s (flag --%s): %s", source(s.key), s.key, show(s.field(&c)), s.flag(), want)
		}
	}
	return nil
}

// flagValue is the flag of one setting. Parsing it checks the text's type
// at once; the value is applied over the file's by apply.
type flagValue struct {
	setting
	given *[]given
}

// given is a flag given on the command line, in order.
type given struct {
	setting
	text string
}

func (f flagValue) String() string { return "" }

func (f flagValue) Set(text string) error {
	var scratch Config
	if err := setText(f.field(&scratch), text); err != nil {
		return fmt.Errorf("%s (--%s): %w", f.key, f.flag(), err)
	}
	*f.given = append(*f.given, given{f.setting, text})
	return nil
}

// defineFlags adds a flag per setting to fs, recording those given.
func defineFlags(fs *flag.FlagSet, out *[]given) {
	for _, s := range settings {
		fs.Var(flagValue{s, out}, s.flag(), s.usage+" (config: "+s.key+")")
	}
}

// apply sets every flag given over c, in the order given, and checks the
// result once, naming where a bad value came from: a flag, the file at
// path (if any), or the defaults.
func apply(c Config, flags []given, path string) (Config, error) {
	fromFlag := map[string]bool{}
	for _, g := range flags {
		if err := setText(g.field(&c), g.text); err != nil {
			return c, fmt.Errorf("flags: --%s: %s: %w", g.flag(), g.key, err)
		}
		fromFlag[g.key] = true
	}
	return c, c.validate(func(key string) string {
		switch {
		case fromFlag[key]:
			return "flags: "
		case path != "":
			return "config " + path + ": "
		}
		return "defaults: "
	})
}

// setText parses a flag's text into the field p points to.
func setText(p any, text string) error {
	var err error
	switch p := p.(type) {
	case *string:
		*p = text
	case *int:
		*p, err = strconv.Atoi(text)
	case *float64:
		*p, err = strconv.ParseFloat(text, 64)
		if err == nil && (math.IsNaN(*p) || math.IsInf(*p, 0)) {
			err = fmt.Errorf("%q is not a finite number", text)
		}
	case *time.Duration:
		*p, err = time.ParseDuration(text)
	case encoding.TextUnmarshaler:
		err = p.UnmarshalText([]byte(text))
	default:
		err = fmt.Errorf("no parser for %T", p)
	}
	return err
}

// show writes the value p points to as the file would.
func show(p any) string {
	switch p := p.(type) {
	case *string:
		return strconv.Quote(*p)
	case *int:
		return strconv.Itoa(*p)
	case *float64:
		return strconv.FormatFloat(*p, 'g', -1, 64)
	case *time.Duration:
		return p.String()
	case fmt.Stringer:
		return p.String()
	}
	return fmt.Sprint(p)
}
