package nixhook

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Conf is Nix's settings, name to value, as nix.conf and NIX_CONFIG give
// them or as `nix config show` prints them: what decides whether Nix runs
// the hook and maps what it prints.
type Conf map[string]string

// ParseShown reads "name = value" lines, as `nix config show` prints them.
func ParseShown(out []byte) Conf {
	c := Conf{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			c[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return c
}

// ReadFile reads a nix.conf into c the way Nix does: "#" comments, "name =
// value", extra-name appending to name, include (must exist) and !include
// (may be missing) of paths relative to the file.
func (c Conf) ReadFile(path string) error { return c.readFile(path, 0) }

// Parse reads nix.conf text into c, such as $NIX_CONFIG, which Nix applies
// after the files; includes are relative to dir.
func (c Conf) Parse(r io.Reader, dir string) error { return c.parse(r, dir, 0) }

// maxIncludeDepth bounds include chains, so a file that includes itself is
// an error rather than a loop.
const maxIncludeDepth = 16

func (c Conf) readFile(path string, depth int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return c.parse(f, filepath.Dir(path), depth)
}

func (c Conf) parse(r io.Reader, dir string, depth int) error {
	if depth > maxIncludeDepth {
		return errors.New("includes nested too deep")
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		words := strings.Fields(line)
		if len(words) == 0 {
			continue
		}
		if words[0] == "include" || words[0] == "!include" {
			if len(words) != 2 {
				return fmt.Errorf("line %d: %s takes one path", n, words[0])
			}
			p := words[1]
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			err := c.readFile(p, depth+1)
			if err != nil && !(words[0] == "!include" && errors.Is(err, os.ErrNotExist)) {
				return err
			}
			continue
		}
		if len(words) < 2 || words[1] != "=" {
			return fmt.Errorf("line %d: want 'name = value'", n)
		}
		name, value := words[0], strings.Join(words[2:], " ")
		if base, ok := strings.CutPrefix(name, "extra-"); ok {
			if old := c[base]; old != "" {
				value = old + " " + value
			}
			name = base
		}
		c[name] = value
	}
	return sc.Err()
}
