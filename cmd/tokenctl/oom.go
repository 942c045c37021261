package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// raiseOOMScoreAdj raises tokenctl's own oom_score_adj to adj, never
// lowering it, before it starts the command: the command and every job it
// starts inherit it, so a kernel OOM kill takes one of them before the
// rest of the host. Raising needs no privilege.
func raiseOOMScoreAdj(adj int) {
	if adj == 0 {
		return
	}
	const path = "/proc/self/oom_score_adj"
	raw, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if cur, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && cur >= adj {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(adj)), 0); err != nil {
		fmt.Fprintf(os.Stderr, "tokenctl: cannot raise oom_score_adj to %d: %v; the build runs with its own\n", adj, err)
	}
}
