#!/usr/bin/env bash
# Tests nix/setup-hook.sh in isolation: each case sources it in a subshell
# under `set -eu` (as stdenv runs), with or without a FIFO, and checks
# MAKEFLAGS, CARGO_MAKEFLAGS and the arguments make/ninja really receive
# (fake make and ninja on PATH print them).
# usage: bash testdata/nix/setup-hook-test.sh [path/to/setup-hook.sh]
set -uo pipefail
# The cases are bash source in single quotes, expanded by the inner bash.
# shellcheck disable=SC2016

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hook=${1:-$here/../../nix/setup-hook.sh}
hook=$(cd "$(dirname "$hook")" && pwd)/$(basename "$hook")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/bin"
for t in make ninja; do
  cat >"$tmp/bin/$t" <<'EOF'
#!/bin/sh
printf '%s args=[%s] MAKEFLAGS=[%s] CARGO_MAKEFLAGS=[%s]\n' "$(basename "$0")" "$*" "${MAKEFLAGS-<unset>}" "${CARGO_MAKEFLAGS-<unset>}"
EOF
  chmod +x "$tmp/bin/$t"
done
mkfifo "$tmp/fifo"
: >"$tmp/plain-file"
fifo=$tmp/fifo
auth="--jobserver-auth=fifo:$fifo"

passed=0 failed=0
# check NAME EXPECTED SCRIPT: runs SCRIPT after sourcing the hook in a fresh
# bash (stdenv's set -eu), compares its stdout with EXPECTED.
check() {
  local name=$1 want=$2 script=$3 got
  got=$(env -i PATH="$tmp/bin:/usr/bin:/bin" HOOK="$hook" FIFO="$fifo" TMP="$tmp" bash -c '
set -eu
set -o pipefail
runHook() {
  local hooksSlice="${1%Hook}Hooks[@]" h
  for h in ${!hooksSlice+"${!hooksSlice}"}; do "$h"; done
}
nHooks() { local s="${1}[@]"; set -- ${!s+"${!s}"}; echo $#; }
'"$script" 2>"$tmp/stderr")
  if [ "$got" = "$want" ]; then
    passed=$((passed + 1))
    echo "ok - $name"
  else
    failed=$((failed + 1))
    echo "FAIL - $name"
    echo "  want: $want"
    echo "  got:  $got"
    sed 's/^/  stderr: /' "$tmp/stderr"
  fi
}

check "no FIFO: nothing defined, MAKEFLAGS untouched" \
  "function:none hooks:0 MAKEFLAGS=[-j4 -k]" '
export MAKEFLAGS="-j4 -k" NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$TMP/missing
source "$HOOK"
runHook preBuild
echo "function:$(declare -F make || echo none) hooks:$(nHooks preBuildHooks) MAKEFLAGS=[$MAKEFLAGS]"'

check "default path /run/tokend/jobserver.fifo absent: nothing changes" \
  "none 0 <unset>" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
source "$HOOK"
runHook preBuild
echo "$(declare -F ninja || echo none) $(nHooks preBuildHooks) ${MAKEFLAGS-<unset>}"'

check "a regular file is not a jobserver" "none" '
tokendJobserverFifo=$TMP/plain-file
source "$HOOK"
declare -F make || echo none'

check "dontUseTokendJobserver opts out" "none" '
tokendJobserverFifo=$FIFO dontUseTokendJobserver=1
source "$HOOK"
declare -F make || echo none'

check "parallel build: MAKEFLAGS and CARGO_MAKEFLAGS get the FIFO, user flags kept, -j and old auth dropped" \
  "MAKEFLAGS=[-k --no-print-directory $auth -- CC=gcc\\ -O2] CARGO_MAKEFLAGS=[-k --no-print-directory $auth -- CC=gcc\\ -O2]" '
export MAKEFLAGS="-k -j4 --no-print-directory -j 3 --jobs=5 --jobserver-auth=3,4 --jobserver-fds=5,6 -- CC=gcc\\ -O2"
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild >/dev/null
echo "MAKEFLAGS=[$MAKEFLAGS] CARGO_MAKEFLAGS=[$CARGO_MAKEFLAGS]"'

check "exported to child processes" "[$auth] [$auth]" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild >/dev/null
sh -c '\''echo "[$MAKEFLAGS] [$CARGO_MAKEFLAGS]"'\'''

check "joining holds the FIFO open read-write, once" "target=$fifo O_ACCMODE=2 same fd" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild >/dev/null
fd=$tokendJobserverFd
runHook preBuild >/dev/null
flags=$(sed -n "s/^flags:[[:space:]]*//p" /proc/$$/fdinfo/$fd)
echo "target=$(readlink /proc/$$/fd/$fd) O_ACCMODE=$((0$flags & 3)) $([ "$fd" = "$tokendJobserverFd" ] && echo same fd)"'

# make 4.4 opens the FIFO with a blocking read-only open(): with no writer
# left (tokend died) it waits forever, unless the build holds one. The
# build holds it from the moment the hook is sourced, so the tokens in it
# also outlive a tokend that dies during configure.
check "a make started after tokend died does not hang in open()" "before sourcing: blocked
after sourcing: opened" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
rdonly_open() { timeout 0.5 bash -c '\''exec 3<"$1" && echo opened'\'' _ "$FIFO" || echo blocked; }
echo "before sourcing: $(rdonly_open)"
source "$HOOK"
echo "after sourcing: $(rdonly_open)"'

check "a parallel tool call without the export holds the FIFO too" "held" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO
source "$HOOK"
make -j8 >/dev/null
echo "${tokendJobserverFd:+held}"'

check "not parallel: MAKEFLAGS untouched" "[-k] <unset>" '
export MAKEFLAGS=-k NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild
echo "[$MAKEFLAGS] ${CARGO_MAKEFLAGS-<unset>}"'

check "enableParallelBuilding empty: not parallel" "<unset>" '
export NIX_BUILD_CORES=8 enableParallelBuilding=
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild
echo "${MAKEFLAGS-<unset>}"'

check "stdenv make call: -j\$NIX_BUILD_CORES dropped, jobserver passed" \
  "make args=[SHELL=/bin/bash all] MAKEFLAGS=[$auth] CARGO_MAKEFLAGS=[$auth]" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild >/dev/null
flagsArray=(${enableParallelBuilding:+-j${NIX_BUILD_CORES}} SHELL=/bin/bash)
make "${flagsArray[@]}" all'

check "old stdenv call: -j8 -l8 dropped" "make args=[-f GNUmakefile] MAKEFLAGS=[$auth] CARGO_MAKEFLAGS=[$auth]" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
make -f GNUmakefile -j8 -l8'

check "split -j 8 and --jobs=8 dropped" "make args=[a] MAKEFLAGS=[$auth] CARGO_MAKEFLAGS=[$auth]
make args=[b] MAKEFLAGS=[$auth] CARGO_MAKEFLAGS=[$auth]" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO
source "$HOOK"
make -j 8 a
make --jobs=8 b'

check "ninja hook call: -j\$NIX_BUILD_CORES dropped, works with TERM=dumb prefix" \
  "ninja args=[-C build] MAKEFLAGS=[-s $auth] CARGO_MAKEFLAGS=[-s $auth]" '
export MAKEFLAGS=-s NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO
source "$HOOK"
buildCores=1
if [ "${enableParallelBuilding-1}" ]; then buildCores=$NIX_BUILD_CORES; fi
TERM=dumb ninja -j$buildCores -C build'

check "serial ninja call (-j1) untouched" "ninja args=[-j1] MAKEFLAGS=[<unset>] CARGO_MAKEFLAGS=[<unset>]" '
export NIX_BUILD_CORES=8 enableParallelBuilding=
tokendJobserverFifo=$FIFO
source "$HOOK"
buildCores=1
if [ "${enableParallelBuilding-1}" ]; then buildCores=$NIX_BUILD_CORES; fi
ninja -j$buildCores'

check "a package's own -j1 is kept" "make args=[-j1 check] MAKEFLAGS=[-k] CARGO_MAKEFLAGS=[<unset>]" '
export MAKEFLAGS=-k NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild >/dev/null
make -j1 check'

check "serial phase after export (no -j): run with the flags from before the hook" \
  "make args=[install] MAKEFLAGS=[-k] CARGO_MAKEFLAGS=[<unset>]
after: MAKEFLAGS=[-k $auth]" '
export MAKEFLAGS=-k NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO
source "$HOOK"
runHook preBuild >/dev/null
make install
echo "after: MAKEFLAGS=[$MAKEFLAGS]"'

check "NIX_BUILD_CORES=1: -j1 is left alone" "make args=[-j1] MAKEFLAGS=[<unset>] CARGO_MAKEFLAGS=[<unset>]" '
export NIX_BUILD_CORES=1
tokendJobserverFifo=$FIFO
source "$HOOK"
make -j1'

check "sourced twice: one preBuild hook" "1" '
tokendJobserverFifo=$FIFO
source "$HOOK"
source "$HOOK"
nHooks preBuildHooks'

check "FIFO gone after sourcing: tools run as given" "make args=[-j8] MAKEFLAGS=[<unset>] CARGO_MAKEFLAGS=[<unset>]" '
export NIX_BUILD_CORES=8
mkfifo "$TMP/gone"
tokendJobserverFifo=$TMP/gone
source "$HOOK"
rm "$TMP/gone"
make -j8'

check "exit status of the tool is kept" "rc=3" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO
source "$HOOK"
printf "#!/bin/sh\nexit 3\n" >"$TMP/bin/failing"; chmod +x "$TMP/bin/failing"
rc=0; tokendJobserverRun failing -j8 || rc=$?
echo "rc=$rc"'

# The gate: tokend's line is "<state> <ms stamp> <oom_score_adj>", padded.
gate_line() { printf '%-4s %13d %5d\n' "$1" "$2" "$3"; }
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }

gate_line go "$(now_ms)" 500 >"$tmp/gate-go"
check "gate open: joins at once and raises oom_score_adj, never lowers it" \
  "make args=[all] MAKEFLAGS=[$auth] CARGO_MAKEFLAGS=[$auth] adj=500
adj after a lower value: 500" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO tokendJobserverGate=$TMP/gate-go
source "$HOOK"
make -j8 all >"$TMP/out"
echo "$(cat "$TMP/out") adj=$(cat /proc/self/oom_score_adj)"
tokendJobserverOomScoreAdj 100
echo "adj after a lower value: $(cat /proc/self/oom_score_adj)"'

# A waiting build: a stand-in tokend beats every 100 ms, opens after ~0.6 s.
check "gate waiting: the tool starts only once the gate opens" "waited make args=[all] MAKEFLAGS=[$auth] CARGO_MAKEFLAGS=[$auth]" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO tokendJobserverGate=$TMP/gate-wait
'"$(declare -f gate_line now_ms)"'
gate_line wait "$(now_ms)" 0 >"$tokendJobserverGate"
( for _ in 1 2 3 4 5 6; do sleep 0.1; gate_line wait "$(now_ms)" 0 >"$tokendJobserverGate"; done
  gate_line go "$(now_ms)" 0 >"$tokendJobserverGate" ) &
t0=$(now_ms)
source "$HOOK"
out=$(make -j8 all)
wait
[ $(( $(now_ms) - t0 )) -ge 500 ] && echo "waited $out"
grep -q "waiting for a job slot" "$TMP/stderr" || echo "no waiting message"'

gate_line wait $(($(now_ms) - 60000)) 0 >"$tmp/gate-stale"
check "gate of a dead tokend: runs as without tokend, at once" "make args=[-j8 all] MAKEFLAGS=[<unset>] CARGO_MAKEFLAGS=[<unset>] quick" '
export NIX_BUILD_CORES=8 enableParallelBuilding=1
tokendJobserverFifo=$FIFO tokendJobserverGate=$TMP/gate-stale
'"$(declare -f now_ms)"'
t0=$(now_ms)
source "$HOOK"
runHook preBuild >/dev/null
out=$(make -j8 all)
[ $(( $(now_ms) - t0 )) -lt 1000 ] && echo "$out quick"
grep -q "running without its jobserver" "$TMP/stderr" || echo "no fail-open message"'

gate_line wait "$(now_ms)" 0 >"$tmp/gate-frozen"
check "gate whose stamp stops moving: goes on without tokend after 1.5 s" "make args=[-j8 all] MAKEFLAGS=[<unset>] CARGO_MAKEFLAGS=[<unset>] after 1.5 s" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO tokendJobserverGate=$TMP/gate-frozen
'"$(declare -f now_ms)"'
t0=$(now_ms)
source "$HOOK"
out=$(make -j8 all)
took=$(( $(now_ms) - t0 ))
[ "$took" -ge 1500 ] && [ "$took" -lt 5000 ] && echo "$out after 1.5 s"'

printf 'garbage\n' >"$tmp/gate-garbage"
check "unreadable gate: goes on without tokend" "make args=[-j8] MAKEFLAGS=[<unset>] CARGO_MAKEFLAGS=[<unset>]" '
export NIX_BUILD_CORES=8
tokendJobserverFifo=$FIFO tokendJobserverGate=$TMP/gate-garbage
source "$HOOK"
make -j8'

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
