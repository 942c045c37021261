package nixhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Derivation is what the hook takes from a build's .drv file.
type Derivation struct {
	// Name names the lease: the derivation's pname, else its name, else
	// (no .drv on disk) the name part of its store path.
	Name string
	// Features are its requiredSystemFeatures (big-parallel, ...).
	Features []string
}

// maxDrvSize bounds what the hook reads and parses within its timeout
// (a 60 MB .drv took 2 s and 191 MB here). The largest derivations of
// nixpkgs are a few megabytes; a larger one is refused (no jobserver for
// that build) rather than stalling Nix.
const maxDrvSize = 8 << 20

// maxDepth bounds term nesting. Nix writes at most four levels (a dynamic
// derivation's input tree adds one per output of an output); the bound
// only keeps a hostile file from exhausting the stack.
const maxDepth = 64

// Describe tells which build Nix is about to run, from its .drv path and
// its sandbox directory, as the pre-build-hook receives them. A .drv that
// is not on disk (some remote builds) is described by its store path
// alone; one that is there but cannot be read or parsed is an error.
func Describe(drvPath, sandboxDir string) (Derivation, error) {
	data, err := readFile(drvPath)
	if errors.Is(err, fs.ErrNotExist) {
		if beside := drvBesideSandbox(drvPath, sandboxDir); beside != "" {
			data, err = readFile(beside)
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		name := nameFromStorePath(drvPath)
		if name == "" {
			return Derivation{}, fmt.Errorf("derivation %s is not on disk and its path names no derivation", drvPath)
		}
		return Derivation{Name: name}, nil
	}
	if err != nil {
		return Derivation{}, err
	}
	d, err := ParseDerivation(data)
	if err != nil {
		return Derivation{}, fmt.Errorf("derivation %s: %w", drvPath, err)
	}
	return d, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxDrvSize+1))
	if err != nil {
		return nil, fmt.Errorf("read derivation %s: %w", path, err)
	}
	if len(data) > maxDrvSize {
		return nil, fmt.Errorf("derivation %s is larger than %d bytes", path, maxDrvSize)
	}
	return data, nil
}

// drvBesideSandbox finds the .drv of a store whose files live under
// another root than the paths it names (store = local?root=DIR, nix
// --store DIR): Nix hands the hook the logical .drv path, which does not
// exist, but builds in <real .drv path>.chroot (Nix 2.8) or
// <real .drv path>.chroot/root (Nix 2.34). It returns "" unless the
// sandbox directory names the same .drv.
func drvBesideSandbox(drvPath, sandboxDir string) string {
	dir := filepath.Clean(sandboxDir)
	if filepath.Base(dir) == "root" {
		dir = filepath.Dir(dir)
	}
	real, ok := strings.CutSuffix(dir, ".chroot")
	if !ok || !filepath.IsAbs(real) || real == filepath.Clean(drvPath) || filepath.Base(real) != filepath.Base(drvPath) {
		return ""
	}
	return real
}

// nameFromStorePath is the name part of /nix/store/<hash>-<name>.drv.
func nameFromStorePath(drvPath string) string {
	base, ok := strings.CutSuffix(filepath.Base(drvPath), ".drv")
	if !ok {
		return ""
	}
	const hashLen = 32 // nixbase32 of 160 bits
	if len(base) > hashLen+1 && base[hashLen] == '-' && isNixBase32(base[:hashLen]) {
		return base[hashLen+1:]
	}
	return ""
}

func isNixBase32(s string) bool {
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune("0123456789abcdfghijklmnpqrsvwxyz", rune(s[i])) {
			return false
		}
	}
	return true
}

// ParseDerivation reads the ATerm text Nix writes into a .drv file,
//
//	Derive([outputs],[input drvs],[input srcs],"system","builder",[args],[env])
//
// or DrvWithVersion("xp-dyn-drv", the same seven fields) for derivations
// with dynamic inputs, and takes the name and requiredSystemFeatures from
// its environment, or from its __json attribute when it uses structured
// attributes. It checks the shape of the whole term, so a truncated,
// padded or garbled file is an error, never a half-read environment.
//
// It is not github.com/nix-community/go-nix's parser, which rejects
// derivations Nix builds: multi-output content-addressed ones and those
// with deferred output paths (see testdata/nix/drv).
func ParseDerivation(data []byte) (Derivation, error) {
	env, err := parseEnv(data)
	if err != nil {
		return Derivation{}, err
	}
	if js, ok := env["__json"]; ok {
		return structuredDerivation(js)
	}
	d := Derivation{Name: env["pname"]}
	if f := strings.Fields(env["requiredSystemFeatures"]); len(f) > 0 {
		d.Features = f
	}
	if d.Name == "" {
		d.Name = env["name"]
	}
	if d.Name == "" {
		return Derivation{}, errors.New("derivation has no name")
	}
	return d, nil
}

// structuredDerivation reads a structured-attributes derivation, whose
// attributes are one JSON object. pname is whatever the package set put
// there, so one that is not a string is ignored; name and
// requiredSystemFeatures have the types Nix itself insists on.
func structuredDerivation(js string) (Derivation, error) {
	var attrs struct {
		Name     string          `json:"name"`
		PName    json.RawMessage `json:"pname"`
		Features []string        `json:"requiredSystemFeatures"`
	}
	if err := json.Unmarshal([]byte(js), &attrs); err != nil {
		return Derivation{}, fmt.Errorf("structured attributes: %w", err)
	}
	d := Derivation{Name: attrs.Name}
	if len(attrs.Features) > 0 {
		d.Features = attrs.Features
	}
	var pname string
	if json.Unmarshal(attrs.PName, &pname) == nil && pname != "" {
		d.Name = pname
	}
	if d.Name == "" {
		return Derivation{}, errors.New("derivation has no name")
	}
	return d, nil
}

// envKeys are the environment variables the hook reads; the others are
// checked for shape and skipped, not kept.
var envKeys = map[string]bool{"pname": true, "name": true, "requiredSystemFeatures": true, "__json": true}

// parseEnv checks the whole term and returns the variables of its
// environment that the hook reads (envKeys).
func parseEnv(data []byte) (map[string]string, error) {
	p := &parser{data: data}
	switch {
	case p.literal("Derive("):
	case p.literal("DrvWithVersion("):
		v, err := p.str()
		if err != nil {
			return nil, err
		}
		if v != "xp-dyn-drv" {
			return nil, fmt.Errorf("unknown derivation version %q", v)
		}
		if err := p.expect(','); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("not a derivation: it does not start with Derive( or DrvWithVersion(")
	}
	env := map[string]string{}
	fields := []func() error{
		// outputs: (name, path, hash algorithm, hash)
		func() error { return p.list(func() error { return p.tupleOfStrings(4) }) },
		// input derivations: (path, output names), or (path, (names, dynamic outputs))
		func() error {
			return p.list(func() error {
				return p.tuple(func() error { _, err := p.str(); return err }, func() error { return p.term(1) })
			})
		},
		func() error { return p.list(p.skipStr) }, // input sources
		p.skipStr, // system
		p.skipStr, // builder
		func() error { return p.list(p.skipStr) }, // args
		func() error {
			return p.list(func() error {
				var k string
				return p.tuple(
					func() (err error) { k, err = p.str(); return err },
					func() error {
						if !envKeys[k] {
							return p.skipStr()
						}
						if _, dup := env[k]; dup {
							return fmt.Errorf("environment variable %q given twice", k)
						}
						v, err := p.str()
						env[k] = v
						return err
					},
				)
			})
		},
	}
	for i, field := range fields {
		if i > 0 {
			if err := p.expect(','); err != nil {
				return nil, err
			}
		}
		if err := field(); err != nil {
			return nil, err
		}
	}
	if err := p.expect(')'); err != nil {
		return nil, err
	}
	if p.pos != len(p.data) {
		return nil, fmt.Errorf("%d bytes after the derivation", len(p.data)-p.pos)
	}
	return env, nil
}

// parser walks the ATerm subset Nix writes: strings, [lists] and
// (tuples), no whitespace.
type parser struct {
	data []byte
	pos  int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *parser) literal(s string) bool {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(s)) {
		return false
	}
	p.pos += len(s)
	return true
}

func (p *parser) expect(c byte) error {
	if p.pos >= len(p.data) {
		return p.errorf("want %q, got the end", c)
	}
	if p.data[p.pos] != c {
		return p.errorf("want %q, got %q", c, p.data[p.pos])
	}
	p.pos++
	return nil
}

// str reads a quoted string. Nix escapes ", \, newline, carriage return
// and tab; like Nix's reader, a backslash before any other byte stands
// for that byte.
func (p *parser) str() (string, error) {
	if err := p.expect('"'); err != nil {
		return "", err
	}
	var b strings.Builder
	for {
		if p.pos >= len(p.data) {
			return "", p.errorf("unterminated string")
		}
		c := p.data[p.pos]
		p.pos++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.pos >= len(p.data) {
				return "", p.errorf("unterminated string")
			}
			c = p.data[p.pos]
			p.pos++
			switch c {
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			}
		}
		b.WriteByte(c)
	}
}

// skipStr reads past a string without keeping it: most of a .drv is
// strings the hook has no use for.
func (p *parser) skipStr() error {
	if err := p.expect('"'); err != nil {
		return err
	}
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		p.pos++
		switch c {
		case '"':
			return nil
		case '\\':
			p.pos++
		}
	}
	return p.errorf("unterminated string")
}

// seq reads open item,item,... close; an empty sequence is allowed.
func (p *parser) seq(open, close byte, item func() error) error {
	if err := p.expect(open); err != nil {
		return err
	}
	if p.pos < len(p.data) && p.data[p.pos] == close {
		p.pos++
		return nil
	}
	for {
		if err := item(); err != nil {
			return err
		}
		if p.pos < len(p.data) && p.data[p.pos] == close {
			p.pos++
			return nil
		}
		if err := p.expect(','); err != nil {
			return err
		}
	}
}

func (p *parser) list(item func() error) error {
	return p.seq('[', ']', item)
}

// tuple reads a tuple of exactly len(items) elements.
func (p *parser) tuple(items ...func() error) error {
	if err := p.expect('('); err != nil {
		return err
	}
	for i, item := range items {
		if i > 0 {
			if err := p.expect(','); err != nil {
				return err
			}
		}
		if err := item(); err != nil {
			return err
		}
	}
	return p.expect(')')
}

func (p *parser) tupleOfStrings(n int) error {
	items := make([]func() error, n)
	for i := range items {
		items[i] = p.skipStr
	}
	return p.tuple(items...)
}

// term reads any string, list or tuple, nested at most maxDepth deep.
func (p *parser) term(depth int) error {
	if depth > maxDepth {
		return p.errorf("nested deeper than %d", maxDepth)
	}
	if p.pos >= len(p.data) {
		return p.errorf("want a term, got the end")
	}
	switch p.data[p.pos] {
	case '"':
		return p.skipStr()
	case '[':
		return p.seq('[', ']', func() error { return p.term(depth + 1) })
	case '(':
		return p.seq('(', ')', func() error { return p.term(depth + 1) })
	}
	return p.errorf("want a term, got %q", p.data[p.pos])
}
