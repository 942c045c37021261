package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/nixhook"
)

// doctor answers one question: can tokend's Nix pre-build-hook work on
// this host? It prints one line per check, OK, WARN or FAIL, with the fix,
// and fails if any check failed. WARN is for what only weakens tokend
// (memory signals, tools outside Nix); FAIL for what leaves builds without
// a jobserver.
type doctor struct {
	socket string
	client *api.Client
	// Where the host's files are; tests point them elsewhere.
	procDir    string // /proc
	cgroupRoot string // /sys/fs/cgroup
	// hookSocket is where tokend-nix-hook looks, run by Nix as root
	// without TOKEND_SOCKET.
	hookSocket string
}

type level int

const (
	passed level = iota
	warned
	failed
)

func (l level) String() string { return [...]string{"OK", "WARN", "FAIL"}[l] }

type finding struct {
	level      level
	check, msg string
	fix        string // what to do, for WARN and FAIL
}

func (f finding) String() string {
	s := fmt.Sprintf("%-4s %s: %s", f.level, f.check, f.msg)
	if f.fix != "" {
		s += "; fix: " + f.fix
	}
	return s
}

// commandTimeout bounds each program doctor runs (nix, make, ninja).
const commandTimeout = 10 * time.Second

func runDoctor(socket string) int {
	d := &doctor{
		socket: socket, client: api.NewClient(socket),
		procDir: "/proc", cgroupRoot: "/sys/fs/cgroup",
		hookSocket: api.SocketPath("/run/tokend"),
	}
	return d.report(context.Background(), os.Stdout)
}

// report runs every check, prints them and returns the exit status.
func (d *doctor) report(ctx context.Context, w io.Writer) int {
	var counts [3]int
	for _, f := range d.checks(ctx) {
		fmt.Fprintln(w, f)
		counts[f.level]++
	}
	fmt.Fprintf(w, "%d OK, %d WARN, %d FAIL\n", counts[passed], counts[warned], counts[failed])
	if counts[failed] > 0 {
		return 1
	}
	return 0
}

func (d *doctor) checks(ctx context.Context) []finding {
	out := d.tokend(ctx)
	nix, lix := d.nixVersion(ctx)
	out = append(out, lix)
	conf := d.nixConfig(ctx, nix)
	out = append(out, d.hookSetting(conf), d.sandbox(conf), d.buildUsers(conf), d.runtimeDir())
	out = append(out, d.cgroupV2(), d.pressure())
	out = append(out, d.tool(ctx, "make", []int{4, 4}, `GNU Make ([0-9][0-9.]*)`,
		"make before 4.4 cannot open a fifo jobserver: tokenctl run hands it descriptors instead (--style pipe); Nix builds use nixpkgs' make",
		"install GNU make >= 4.4 for tokenctl run outside Nix"))
	out = append(out, d.tool(ctx, "ninja", []int{1, 13}, `^([0-9][0-9.]*)`,
		"ninja before 1.13 has no jobserver client and runs its own -j",
		"install ninja >= 1.13 for tokenctl run outside Nix"))
	return out
}

func (d *doctor) tokend(ctx context.Context) []finding {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	st, err := d.client.Status(ctx)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return []finding{{failed, "tokend", "not running: no socket at " + d.socket,
			"start it (systemctl start tokend, or sudo tokend), or point --socket / TOKEND_SOCKET at its socket"}}
	case errors.Is(err, syscall.ECONNREFUSED):
		return []finding{{failed, "tokend", "nothing answers on " + d.socket + " (a stale socket: tokend died?)", "restart tokend"}}
	case err != nil:
		return []finding{{failed, "tokend", err.Error(), "check tokend's log"}}
	}
	out := []finding{{passed, "tokend", fmt.Sprintf("answers at %s: budget %d (%s), %d active leases, %d of %d tokens granted",
		d.socket, st.Budget, st.BudgetReason, st.ActiveLeases, st.Granted, st.Allowance), ""}}
	// The socket belongs to whoever runs tokend. Only root can give each
	// build's FIFO to the build's group.
	if fi, err := os.Lstat(d.socket); err == nil {
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 0 {
			out = append(out, finding{failed, "tokend user", fmt.Sprintf("tokend runs as uid %d (the owner of its socket): it cannot give a build's FIFO to the build's group", uid),
				"run tokend as root (the systemd unit of the NixOS module does)"})
		}
	}
	out = append(out, notJoined(st, time.Now())...)
	if filepath.Clean(d.socket) != d.hookSocket {
		out = append(out, finding{warned, "hook socket", fmt.Sprintf("tokend-nix-hook, run by Nix as root, looks for %s, not %s", d.hookSocket, d.socket),
			"run tokend with its default runtime directory, or set TOKEND_SOCKET in the environment of nix-daemon"})
	}
	return out
}

// nixVersion runs `nix --version`. It returns the nix binary ("" if none)
// and the finding about it: Lix from 2.93 on runs the hook but drops its
// output.
func (d *doctor) nixVersion(ctx context.Context) (string, finding) {
	nix, err := exec.LookPath("nix")
	if err != nil {
		return "", finding{warned, "nix", "no nix on PATH: cannot tell Nix from Lix; settings read from nix.conf", "run tokenctl doctor where nix is on PATH"}
	}
	out, err := output(ctx, nix, "--version")
	if err != nil {
		return "", finding{warned, "nix", fmt.Sprintf("%s --version: %v", nix, err), "check the nix installation"}
	}
	// "nix (Nix) 2.34.8", "nix (Lix, like Nix) 2.93.0"
	line := strings.TrimSpace(firstLine(out))
	fields := strings.Fields(line)
	version := parseVersion(fields[len(fields)-1])
	if strings.Contains(line, "Lix") {
		if atLeast(version, []int{2, 93}) {
			return nix, finding{failed, "nix", line + ": Lix from 2.93 on runs the pre-build-hook but ignores its output, so builds never see their FIFO",
				"use Nix (CppNix), or Lix before 2.93"}
		}
		return nix, finding{passed, "nix", line + " (Lix before 2.93 maps the hook's paths)", ""}
	}
	return nix, finding{passed, "nix", line, ""}
}

// nixConf is Nix's effective settings and where they were read.
type nixConf struct {
	settings nixhook.Conf
	source   string
	// err, if set, is why no settings could be read.
	err error
}

// get returns a setting, or def when Nix would use its default.
func (c nixConf) get(key, def string) string {
	if v, ok := c.settings[key]; ok {
		return v
	}
	return def
}

// nixConfig asks nix for its settings (`nix config show`, or `nix
// show-config` before Nix 2.20), and reads nix.conf itself without nix.
func (d *doctor) nixConfig(ctx context.Context, nix string) nixConf {
	if nix != "" {
		for _, cmd := range [][]string{{"config", "show"}, {"show-config"}} {
			args := append([]string{"--extra-experimental-features", "nix-command"}, cmd...)
			if out, err := output(ctx, nix, args...); err == nil {
				return nixConf{settings: nixhook.ParseShown(out), source: "nix " + strings.Join(cmd, " ")}
			}
		}
	}
	dir := os.Getenv("NIX_CONF_DIR")
	if dir == "" {
		dir = "/etc/nix"
	}
	path := filepath.Join(dir, "nix.conf")
	c := nixConf{settings: nixhook.Conf{}, source: path}
	if err := c.settings.ReadFile(path); err != nil {
		c.err = err
		return c
	}
	// Nix applies $NIX_CONFIG after the files.
	if env := os.Getenv("NIX_CONFIG"); env != "" {
		c.source += " and NIX_CONFIG"
		if err := c.settings.Parse(strings.NewReader(env), dir); err != nil {
			c.err = fmt.Errorf("NIX_CONFIG: %w", err)
		}
	}
	return c
}

func (d *doctor) hookSetting(c nixConf) finding {
	const check = "pre-build-hook"
	if c.err != nil {
		return finding{failed, check, fmt.Sprintf("cannot read Nix's settings: %v", c.err), "check nix.conf"}
	}
	hook := c.get("pre-build-hook", "")
	if hook == "" {
		return finding{failed, check, "not set (" + c.source + ")",
			fmt.Sprintf("add 'pre-build-hook = %s' to nix.conf and restart nix-daemon (NixOS: services.tokend.enable = true)", hookPath())}
	}
	if filepath.Base(hook) != "tokend-nix-hook" {
		return finding{warned, check, fmt.Sprintf("%s is not tokend-nix-hook (%s): builds get a FIFO only if it runs tokend-nix-hook and passes its output on", hook, c.source),
			"set pre-build-hook = " + hookPath()}
	}
	fi, err := os.Stat(hook)
	if err != nil {
		return finding{failed, check, fmt.Sprintf("%s (%s): %v", hook, c.source, err), "install tokend-nix-hook there, or fix pre-build-hook"}
	}
	if fi.Mode().Perm()&0o100 == 0 || !fi.Mode().IsRegular() {
		return finding{failed, check, fmt.Sprintf("%s (%s) is not an executable file: Nix would fail every build", hook, c.source), "chmod 0755 " + hook}
	}
	return finding{passed, check, hook + " (" + c.source + ")", ""}
}

// hookPath guesses where tokend-nix-hook is, for the fix.
func hookPath() string {
	if p, err := exec.LookPath("tokend-nix-hook"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "tokend-nix-hook")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/path/to/tokend-nix-hook"
}

func (d *doctor) sandbox(c nixConf) finding {
	if c.err != nil {
		return finding{failed, "sandbox", "unknown: Nix's settings cannot be read", "check nix.conf"}
	}
	// Nix's default on Linux is true.
	switch v := c.get("sandbox", "true"); v {
	case "true", "relaxed":
		return finding{passed, "sandbox", v, ""}
	default:
		return finding{failed, "sandbox", v + ": Nix runs the pre-build-hook only for sandboxed builds", "set 'sandbox = true' in nix.conf"}
	}
}

// buildUsers checks that a build can open its FIFO: tokend makes it 0660
// root:<group of the build's sandbox>, which is the build users' group,
// or each build's own group with auto-allocate-uids.
func (d *doctor) buildUsers(c nixConf) finding {
	const check = "build users"
	if c.err != nil {
		return finding{failed, check, "unknown: Nix's settings cannot be read", "check nix.conf"}
	}
	if c.get("auto-allocate-uids", "false") == "true" {
		return finding{passed, check, "auto-allocate-uids: each FIFO gets its build's own group", ""}
	}
	group := c.get("build-users-group", "")
	if group == "" {
		return finding{passed, check, "none (build-users-group is empty): builds run as Nix's own user, and each FIFO gets its group", ""}
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return finding{failed, check, fmt.Sprintf("build-users-group %s: %v", group, err),
			"create the group and its build users (nixbld1, ...), or fix build-users-group"}
	}
	return finding{passed, check, fmt.Sprintf("group %s (gid %s): each FIFO is 0660 root:%s", group, g.Gid, group), ""}
}

// runtimeDir checks who can reach the lease FIFOs. Nix maps a FIFO into
// the sandbox as root, so build users need no way to its directory (a
// runtime directory of mode 0700 works); tokenctl run, as the user, does.
func (d *doctor) runtimeDir() finding {
	const check = "runtime dir"
	dir := filepath.Dir(d.socket)
	leases := filepath.Join(dir, "leases")
	if _, err := os.Stat(leases); err != nil {
		return finding{warned, check, fmt.Sprintf("%s: %v", leases, err), "start tokend"}
	}
	if err := unix.Access(leases, unix.X_OK); err != nil {
		return finding{warned, check, fmt.Sprintf("you cannot reach the FIFOs in %s (%v): Nix builds can, tokenctl run cannot", leases, err),
			"join tokend's lease_group, or run tokenctl run as root"}
	}
	return finding{passed, check, fmt.Sprintf("%s: Nix maps FIFOs from it as root; you can reach them too", leases), ""}
}

// cgroup2 finds the cgroup v2 hierarchy: at the cgroup root (unified), or
// under unified/ beside v1 controllers (hybrid). It returns "" for none.
func (d *doctor) cgroup2() string {
	for _, dir := range []string{d.cgroupRoot, filepath.Join(d.cgroupRoot, "unified")} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			return dir
		}
	}
	return ""
}

func (d *doctor) cgroupV2() finding {
	const fix = "boot with systemd.unified_cgroup_hierarchy=1"
	switch v2 := d.cgroup2(); v2 {
	case d.cgroupRoot:
		return finding{passed, "cgroup v2", "mounted at " + v2, ""}
	case "":
		return finding{warned, "cgroup v2", "none under " + d.cgroupRoot + " (cgroup v1 only): tokend sees less of the builds' memory", fix}
	default:
		return finding{warned, "cgroup v2", "hybrid: v1 controllers, and v2 at " + v2 + " without them: tokend sees less of the builds' memory", fix}
	}
}

// pressure checks that memory PSI is there, for the host and for this
// process's cgroup v2 group (the root group has no pressure files).
func (d *doctor) pressure() finding {
	const check = "memory pressure (PSI)"
	host := filepath.Join(d.procDir, "pressure", "memory")
	if _, err := os.ReadFile(host); err != nil {
		return finding{warned, check, fmt.Sprintf("%v: tokend cannot see memory pressure", err),
			"use a kernel with CONFIG_PSI=y and boot with psi=1"}
	}
	v2 := d.cgroup2()
	raw, _ := os.ReadFile(filepath.Join(d.procDir, "self", "cgroup"))
	for _, line := range strings.Split(string(raw), "\n") {
		group, found := strings.CutPrefix(line, "0::")
		if !found || group == "/" || v2 == "" {
			continue
		}
		file := filepath.Join(v2, group, "memory.pressure")
		if _, err := os.ReadFile(file); err != nil {
			return finding{warned, check, fmt.Sprintf("%s, but %v", host, err), "boot with psi=1"}
		}
		return finding{passed, check, host + " and " + file, ""}
	}
	return finding{passed, check, host, ""}
}

// tool checks that name on PATH is at least version want, reading the
// version from `name --version` with pattern.
func (d *doctor) tool(ctx context.Context, name string, want []int, pattern, older, fix string) finding {
	check := name
	bin, err := exec.LookPath(name)
	if err != nil {
		return finding{warned, check, "not on PATH", fix}
	}
	out, err := output(ctx, bin, "--version")
	m := regexp.MustCompile(pattern).FindStringSubmatch(firstLine(out))
	if err != nil || m == nil {
		return finding{warned, check, fmt.Sprintf("%s: cannot read its version", bin), fix}
	}
	if !atLeast(parseVersion(m[1]), want) {
		return finding{warned, check, fmt.Sprintf("%s is %s: %s", bin, m[1], older), fix}
	}
	return finding{passed, check, fmt.Sprintf("%s is %s", bin, m[1]), ""}
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, strings.TrimSpace(firstLine(stderr.Bytes())))
	}
	return out, nil
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}

// parseVersion reads the leading numbers of "4.4.1", "1.13.2.git", "2.93.0-pre".
func parseVersion(s string) []int {
	var v []int
	for _, part := range strings.Split(s, ".") {
		end := 0
		for end < len(part) && part[end] >= '0' && part[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(part[:end])
		if err != nil {
			break
		}
		v = append(v, n)
		if end < len(part) {
			break
		}
	}
	return v
}

func atLeast(v, want []int) bool {
	for i, w := range want {
		if i >= len(v) || v[i] < w {
			return false
		}
		if v[i] > w {
			return true
		}
	}
	return true
}

// notJoinedAfter is how long a nix build may run before doctor says it did
// not join: the setup hook opens the FIFO as stdenv sources it, within a
// second or so of the build's start.
const notJoinedAfter = 10 * time.Second

// notJoined warns of the nix builds that run without ever opening their
// FIFO: their packages lack the setup hook, so they run their own
// -j$NIX_BUILD_CORES outside the budget.
func notJoined(st api.Status, now time.Time) []finding {
	var out []finding
	for _, l := range st.Leases {
		if l.State != api.StateNotJoined || now.Sub(l.Created) < notJoinedAfter {
			continue
		}
		out = append(out, finding{warned, "build " + l.Name,
			fmt.Sprintf("nix build of %s (lease %s, %s old) never joined its jobserver: it runs its own -j outside the budget", l.Name, l.ID, now.Sub(l.Created).Round(time.Second)),
			fmt.Sprintf("build it with the setup hook: pkgs.withJobserver pkgs.%s (or overlays.jobserverEverywhere for every package)", l.Name)})
	}
	return out
}
