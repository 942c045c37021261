// Package version says which build a tokend program is: the version the
// build set (go build -ldflags "-X github.com/tokend/tokend/internal/version.Version=1.0",
// as the Nix package does), else the module version Go recorded, with the
// commit and Go version from the binary's build information. It imports
// only runtime/debug, since tokend-nix-hook, which nix runs for every
// build, links it.
package version

import "runtime/debug"

// Version is set at link time; empty means the module version, if any.
var Version string

// String is the version line of a program: "0.1.0 (commit 0123456789ab,
// modified, go1.26.8)", with what the build recorded.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	v := Version
	if v == "" {
		v = "devel"
		if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	if !ok {
		return v
	}
	var commit, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	detail := bi.GoVersion
	if modified == "true" {
		detail = "modified, " + detail
	}
	if commit != "" {
		detail = "commit " + commit[:min(len(commit), 12)] + ", " + detail
	}
	return v + " (" + detail + ")"
}
