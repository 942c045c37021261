package broker

import (
	"errors"
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/go-hclog"
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
}

// DefaultConfig is what tokend runs with when nothing is configured.
func DefaultConfig() Config {
	return Config{RuntimeDir: DefaultRuntimeDir(), LogLevel: "info"}
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
		return c, fmt.Errorf("config %s: unknown key %s; known keys are runtime_dir, tokens, lease_group, log_level", path, strings.Join(keys, ", "))
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks every value, naming the key of the first bad one.
func (c Config) Validate() error {
	if c.RuntimeDir == "" || !strings.HasPrefix(c.RuntimeDir, "/") {
		return fmt.Errorf("runtime_dir %q: want an absolute path", c.RuntimeDir)
	}
	if c.Tokens < 0 || c.Tokens > 65535 {
		return fmt.Errorf("tokens %d: want 0 (tokend decides) to 65535", c.Tokens)
	}
	if hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("log_level %q: want trace, debug, info, warn or error", c.LogLevel)
	}
	return nil
}
