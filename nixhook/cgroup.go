package nixhook

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// buildCgroup is the cgroup Nix runs this build in with use-cgroups, or ""
// without it. Nix records it, before the hook runs, in
// <state dir>/cgroups/<build uid>; with auto-allocate-uids, which
// use-cgroups goes with, a build's uid is its gid, the group of the
// sandbox directory. The state dir sits beside the real store directory
// that holds the sandbox: /nix/var/nix for /nix/store, and under the root
// of a chroot store. Anything unexpected means no cgroup: the lease is then
// braked through its sandbox's processes, as without use-cgroups.
func buildCgroup(sandboxDir string, gid int) string {
	dir := filepath.Clean(sandboxDir)
	if filepath.Base(dir) == "root" {
		dir = filepath.Dir(dir)
	}
	if !strings.HasSuffix(dir, ".chroot") {
		return ""
	}
	store := filepath.Dir(dir)
	f, err := os.Open(filepath.Join(filepath.Dir(store), "var", "nix", "cgroups", strconv.Itoa(gid)))
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
