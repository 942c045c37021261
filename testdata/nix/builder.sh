# shellcheck shell=bash disable=SC2154
# (out, name, jobs, sleep, job, delay, setupHook come from the derivation.)
# Builder of testdata/nix/jobs.nix, run by /bin/bash inside the Nix sandbox.
# It emulates the few pieces of nixpkgs' stdenv that the jobserver setup hook
# interacts with: sourcing the hook, runHook, stdenv's make buildPhase and the
# ninja setup hook's ninjaBuildPhase (same -j logic as nixpkgs).
set -eu
set -o pipefail

/bin/busybox mkdir -p "$TMPDIR/bin"
/bin/busybox --install -s "$TMPDIR/bin"
export PATH="$TMPDIR/bin:/tools"
export SHELL=/bin/bash
sleep "$delay"

# stdenv's runHook, reduced to what setup hooks use: the <name>Hooks array,
# then the variable or function <name>.
runHook() {
    local hookName="$1"
    shift
    local hooksSlice="${hookName%Hook}Hooks[@]"
    local hook
    for hook in ${!hooksSlice+"${!hooksSlice}"}; do
        "$hook" "$@"
    done
    if [ -n "${!hookName-}" ]; then
        eval "${!hookName}"
    fi
}

# As stdenv does for every file in its inputs: source it.
# shellcheck disable=SC1090
source "$setupHook"

mkdir -p "$out"
echo "$name" >"$out/name"
if [ -p /run/tokend/jobserver.fifo ]; then echo yes; else echo no; fi >"$out/fifo-present"
echo "$NIX_BUILD_CORES" >"$out/cores"

cat >"$TMPDIR/job.sh" <<'EOF'
# job.sh LOG ID: one build job
log=$1 id=$2
printf 'S %s %s\n' "${EPOCHREALTIME/./}" "$id" >>"$log"
if [ "$id" = t1 ]; then
    printf 'MAKEFLAGS=%s\nCARGO_MAKEFLAGS=%s\nOOM_SCORE_ADJ=%s\n' "${MAKEFLAGS-<unset>}" "${CARGO_MAKEFLAGS-<unset>}" "$(cat /proc/self/oom_score_adj)" >"$log.env"
fi
if [ -n "$JOB_CMD" ]; then
    $JOB_CMD || exit
else
    sleep "$JOB_SLEEP"
fi
printf 'E %s %s\n' "${EPOCHREALTIME/./}" "$id" >>"$log"
: >"$id"
EOF
export JOB_SLEEP="$sleep" JOB_CMD="$job"

mkdir -p "$TMPDIR/mk" "$TMPDIR/nj"
targets=""
i=1
while [ "$i" -le "$jobs" ]; do
    targets="$targets t$i"
    i=$((i + 1))
done
{
    echo "all:$targets"
    for t in $targets; do
        printf '%s:\n\t@/bin/bash %s %s %s\n' "$t" "$TMPDIR/job.sh" "$out/make.log" "$t"
    done
} >"$TMPDIR/mk/Makefile"
{
    # shellcheck disable=SC2016 # $out is ninja's
    printf 'rule job\n  command = /bin/bash %s %s $out\n' "$TMPDIR/job.sh" "$out/ninja.log"
    for t in $targets; do
        printf 'build %s: job\n' "$t"
    done
} >"$TMPDIR/nj/build.ninja"

# nixpkgs stdenv's buildPhase, make part.
makeBuildPhase() {
    runHook preBuild
    local flagsArray=(
        ${enableParallelBuilding:+-j${NIX_BUILD_CORES}}
        SHELL="$SHELL"
    )
    echo "build flags: ${flagsArray[*]}"
    make "${flagsArray[@]}"
    runHook postBuild
}

# nixpkgs ninja setup hook's ninjaBuildPhase.
ninjaBuildPhase() {
    runHook preBuild
    local buildCores=1
    if [ "${enableParallelBuilding-1}" ]; then
        buildCores="$NIX_BUILD_CORES"
    fi
    local flagsArray=(-j"$buildCores")
    echo "build flags: ${flagsArray[*]}"
    TERM=dumb ninja "${flagsArray[@]}"
    runHook postBuild
}

(cd "$TMPDIR/mk" && makeBuildPhase) 2>&1 | tee "$out/make.out"
(cd "$TMPDIR/nj" && ninjaBuildPhase) 2>&1 | tee "$out/ninja.out"
