package memory

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// memcg reads one memory cgroup directory; procfs has no reader for these
// files.
type memcg struct {
	dir     string
	version int
	files   *kernelFiles
}

func openMemcg(dir string, files *kernelFiles) (*memcg, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("memory: cgroup: %w (Config.Cgroup must be an existing cgroup directory)", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("memory: cgroup %s is not a directory (Config.Cgroup must be a cgroup directory)", dir)
	}
	for _, probe := range []struct {
		file    string
		version int
	}{{"memory.current", 2}, {"memory.limit_in_bytes", 1}} {
		_, err := os.Stat(filepath.Join(dir, probe.file))
		if err == nil {
			return &memcg{dir: dir, version: probe.version, files: files}, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("memory: cgroup %s: %w", dir, err)
		}
	}
	return nil, fmt.Errorf("memory: cgroup %s has neither memory.current (v2) nor memory.limit_in_bytes (v1): "+
		"no memory controller there; on cgroup v2 enable it with `echo +memory > cgroup.subtree_control` in the parent, "+
		"on a hybrid host pass the group under the v1 memory mount (such as /sys/fs/cgroup/memory/...)", dir)
}

func (c *memcg) read() (Memcg, error) {
	read := c.readV1
	if c.version == 2 {
		read = c.readV2
	}
	m, err := read()
	if isGone(err) {
		return Memcg{}, fmt.Errorf("%w (if the cgroup was removed, make a new Domain for its successor)", err)
	}
	return m, err
}

func (c *memcg) readV2() (Memcg, error) {
	m := Memcg{Version: 2}
	var err error
	if m.Max, err = c.files.readLimit(c.path("memory.max")); err != nil {
		return Memcg{}, err
	}
	if m.High, err = c.files.readLimit(c.path("memory.high")); err != nil {
		return Memcg{}, err
	}
	if m.Usage, err = c.files.readUint(c.path("memory.current")); err != nil {
		return Memcg{}, err
	}
	if err := c.files.readKeyed(c.path("memory.stat"), map[string]*uint64{
		"inactive_file": &m.InactiveFile,
		"active_file":   &m.ActiveFile,
		"anon":          &m.Anon,
		"file":          &m.File,
	}); err != nil {
		return Memcg{}, err
	}
	if err := c.files.readKeyed(c.path("memory.events"), map[string]*uint64{
		"max":      &m.LimitHits,
		"oom_kill": &m.OOMKills,
	}); err != nil {
		return Memcg{}, err
	}
	return m, nil
}

func (c *memcg) readV1() (Memcg, error) {
	m := Memcg{Version: 1, High: Unlimited}
	var err error
	if m.Max, err = c.files.readUint(c.path("memory.limit_in_bytes")); err != nil {
		return Memcg{}, err
	}
	if m.Usage, err = c.files.readUint(c.path("memory.usage_in_bytes")); err != nil {
		return Memcg{}, err
	}
	if err := c.files.readKeyed(c.path("memory.stat"), map[string]*uint64{
		"total_inactive_file": &m.InactiveFile,
		"total_active_file":   &m.ActiveFile,
		"total_rss":           &m.Anon,
		"total_cache":         &m.File,
	}); err != nil {
		return Memcg{}, err
	}
	if m.LimitHits, err = c.files.readUint(c.path("memory.failcnt")); err != nil {
		return Memcg{}, err
	}
	if err := c.files.readKeyed(c.path("memory.oom_control"), map[string]*uint64{
		"oom_kill": &m.OOMKills,
	}); err != nil {
		return Memcg{}, fmt.Errorf("%w (memory.oom_control counts oom_kill since Linux 4.13)", err)
	}
	return m, nil
}

func (c *memcg) path(name string) string { return filepath.Join(c.dir, name) }

func (k *kernelFiles) readTrimmed(path string) (s string, err error) {
	err = k.read(path, func(b []byte) error {
		s = string(bytes.TrimSpace(b))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("memory: %w", err)
	}
	return s, nil
}

// readUint reads a file holding one decimal number.
func (k *kernelFiles) readUint(path string) (uint64, error) {
	s, err := k.readTrimmed(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory: %s: want one decimal number: %w", path, err)
	}
	return v, nil
}

// readLimit reads a v2 limit file: a number of bytes, or "max" for none.
func (k *kernelFiles) readLimit(path string) (uint64, error) {
	s, err := k.readTrimmed(path)
	if err != nil {
		return 0, err
	}
	if s == "max" {
		return Unlimited, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory: %s: want a number of bytes or \"max\": %w", path, err)
	}
	return v, nil
}

// readKeyed reads a flat-keyed file of "key value" lines (memory.stat,
// memory.events, memory.oom_control) into want, and fails if any wanted key
// is absent: a missing key means a kernel or cgroup version this package
// does not understand, and a silent zero would inflate headroom.
func (k *kernelFiles) readKeyed(path string, want map[string]*uint64) error {
	seen := make(map[string]bool, len(want))
	err := k.read(path, func(b []byte) error {
		for line := range bytes.Lines(b) {
			line = bytes.TrimSuffix(line, []byte{'\n'})
			key, val, ok := bytes.Cut(line, []byte{' '})
			if !ok {
				return fmt.Errorf("%s: line %q is not \"key value\"", path, line)
			}
			dst, wanted := want[string(key)]
			if !wanted {
				continue
			}
			v, err := strconv.ParseUint(string(val), 10, 64)
			if err != nil {
				return fmt.Errorf("%s: key %s: %w", path, key, err)
			}
			*dst = v
			seen[string(key)] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	for k := range want {
		if !seen[k] {
			return fmt.Errorf("memory: %s has no %q line", path, k)
		}
	}
	return nil
}
