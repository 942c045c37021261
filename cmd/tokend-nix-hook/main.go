// Command tokend-nix-hook is tokend's Nix pre-build-hook:
//
//	pre-build-hook = /path/to/tokend-nix-hook      (nix.conf)
//
// Nix runs it as `tokend-nix-hook DRV SANDBOXDIR` before each sandboxed
// build. It gives the build a lease of tokend's (socket: $TOKEND_SOCKET,
// else tokend's default) and prints the command that maps the lease's FIFO
// into the sandbox at /run/tokend/jobserver.fifo. It always exits 0 and
// prints nothing when it cannot help: Nix fails the build on anything
// else. See package nixhook.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/version"
	"github.com/tokend/tokend/nixhook"
)

const usage = `tokend-nix-hook is tokend's Nix pre-build-hook. For each sandboxed build it
registers a lease with tokend and maps the lease's jobserver FIFO into the
sandbox at /run/tokend/jobserver.fifo. It never fails a build: with tokend
down it prints nothing.

Usage:
  tokend-nix-hook DRV SANDBOXDIR     (nix runs it so)
  tokend-nix-hook --version

Example, in nix.conf:
  pre-build-hook = /run/current-system/sw/bin/tokend-nix-hook
  sandbox = true

The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock.
`

func main() {
	// A panic would exit 2 and fail the build; say it and exit 0 instead.
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "tokend-nix-hook: internal error: %v; this build runs without tokend's jobserver\n", r)
			os.Exit(0)
		}
	}()
	if len(os.Args) == 2 {
		switch os.Args[1] {
		case "--version":
			fmt.Println("tokend-nix-hook", version.String())
			return
		case "--help", "-h":
			fmt.Print(usage)
			return
		}
	}
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "tokend-nix-hook: got %d arguments, want DRV SANDBOXDIR (nix.conf: pre-build-hook = %s); doing nothing\n", len(os.Args)-1, os.Args[0])
		return
	}
	r := nixhook.Run(context.Background(), nixhook.Options{Socket: api.DefaultSocket()}, os.Args[1], os.Args[2])
	if r.Problem != "" {
		fmt.Fprintln(os.Stderr, "tokend-nix-hook:", r.Problem)
	}
	os.Stdout.WriteString(r.Stdout)
}
