#!/usr/bin/env bash
# Runs every Go native fuzz target (func FuzzX in a _test.go file) for a
# few seconds, one target at a time, as go test -fuzz requires. A target
# that finds a failing input fails the run and leaves the input under the
# package's testdata/fuzz/ to reproduce it. .ci/test calls it.
# The budget is a count of inputs, not a duration: with a duration, Go
# 1.26's fuzz coordinator can report "context deadline exceeded" as a
# failure when the time runs out while a worker is mid-input, with nothing
# found (golang/go#75804, fixed in Go 1.27; seen here on FuzzLoadState).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
fuzztime=${FUZZTIME:-20000x}
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
    echo "fuzz $pkg $target for $fuzztime"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
  done
done
