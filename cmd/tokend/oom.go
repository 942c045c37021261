package main

import (
	"os"
	"strconv"

	"github.com/hashicorp/go-hclog"
)

// selfOOMScoreAdj keeps tokend out of the OOM killer's way: killed, it
// could no longer collect tokens or thaw what it froze, and the builds it
// gates would go on unbounded. It is not -1000 (never): a tokend that
// leaks should still be killable.
const selfOOMScoreAdj = -900

// protectSelf lowers tokend's own oom_score_adj. Lowering it takes
// CAP_SYS_RESOURCE; without it tokend says so and runs as it is.
func protectSelf(log hclog.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(selfOOMScoreAdj)), 0); err != nil {
		log.Info("cannot lower tokend's own oom_score_adj; the OOM killer may take it like any process", "want", selfOOMScoreAdj, "error", err)
	}
}
