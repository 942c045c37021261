// Package buildtest runs real builds for tests: it finds the real make, ninja
// and cargo, writes build graphs whose jobs record when they run, and
// measures their concurrency.
//
// The jobs are a small static Go program (see probe/main.go) built once and
// cached. Each job appends "S <unix-ns> <id>" to a log when it starts and
// "E <unix-ns> <id>" when it ends, so a Run read from the log tells exactly
// how many jobs a build ran at once: a jobserver client returns a token only
// after the job holding it has ended, so no timing threshold is involved.
//
// Tools are found through $TOKEND_TOOLS_BIN (set by .ci/test, filled by
// .ci/tools.sh), then $PATH. A missing tool skips the test, except under
// CI=true where it fails it.
package buildtest
