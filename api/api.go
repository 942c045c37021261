// Package api is tokend's control API as both ends see it: the paths, the
// JSON bodies, where the socket is, and a client. It is the whole contract
// between tokend and its clients (tokenctl, the nix hook), so it imports
// the standard library only: a client links nothing of the daemon.
//
// The API is HTTP on a unix socket. Who may do what is decided by tokend
// from the peer's credentials, never from anything a body says.
package api

import (
	"os"
	"path/filepath"
)

// Paths. Versioned, so a newer tokenctl can tell an older tokend.
const (
	PathStatus = "/v1/status"
	PathLeases = "/v1/leases"
	PathBudget = "/v1/budget"
)

// DefaultRuntimeDir is where tokend keeps its socket and FIFOs when not
// told otherwise: /run/tokend for root, $XDG_RUNTIME_DIR/tokend for others.
func DefaultRuntimeDir() string {
	if os.Geteuid() != 0 {
		if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
			return filepath.Join(d, "tokend")
		}
	}
	return "/run/tokend"
}

// SocketPath is the control socket inside a runtime directory.
func SocketPath(runtimeDir string) string { return filepath.Join(runtimeDir, "tokend.sock") }

// DefaultSocket is $TOKEND_SOCKET, else the socket in DefaultRuntimeDir.
func DefaultSocket() string {
	if s := os.Getenv("TOKEND_SOCKET"); s != "" {
		return s
	}
	return SocketPath(DefaultRuntimeDir())
}

// Error is the body of every answer with a status of 400 or more.
type Error struct {
	Error string `json:"error"`
}
