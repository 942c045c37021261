package nixhook

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultNixStateDir is Nix's state directory, where it records each
// build's cgroup: $NIX_STATE_DIR, else /nix/var/nix (also for a chroot
// store; measured with Nix 2.34).
func DefaultNixStateDir() string {
	if d := os.Getenv("NIX_STATE_DIR"); d != "" {
		return d
	}
	return "/nix/var/nix"
}

// buildCgroup is the cgroup Nix runs this build in with use-cgroups, or ""
// without it. Nix records it, before the hook runs, in
// <state dir>/cgroups/<build uid>; with auto-allocate-uids, which
// use-cgroups goes with, a build's uid is its gid, the group of the
// sandbox directory (Nix 2.34 here: 872415232 for both). Anything
// unexpected means no cgroup: the lease is then braked through its
// sandbox's processes, as without use-cgroups.
func buildCgroup(stateDir string, gid int) string {
	f, err := os.Open(filepath.Join(stateDir, "cgroups", strconv.Itoa(gid)))
	if err != nil {
		return ""
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return ""
	}
	cg := string(bytes.TrimSpace(raw))
	if !filepath.IsAbs(cg) || filepath.Clean(cg) != cg || strings.ContainsAny(cg, "\n\x00") {
		return ""
	}
	return cg
}
