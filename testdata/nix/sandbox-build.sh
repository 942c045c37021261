#!/usr/bin/env bash
# Runs REAL sandboxed Nix builds of testdata/nix/jobs.nix as root, with a
# private NIX_CONF_DIR and a private store, and reports how many jobs ran at
# once inside each sandbox.
#
# usage: sandbox-build.sh --nix-bin DIR [options]
#   --nix-bin DIR      directory holding nix-build (e.g. /usr/bin for Debian's 2.8)
#   --hook PATH        pre-build-hook program; "" or absent: no hook configured
#   --tools DIR        directory with make (>= 4.4, static) and ninja (>= 1.13);
#                      default $TOKEND_TOOLS_BIN, else the last line of .ci/tools.sh
#   --work DIR         where config, nix-build.log and logs/ go (default: mktemp -d)
#   --store ROOT       private store root (default /var/cache/tokend-nix/<nix version>);
#                      kept outside /nix (Debian's 2.8 owns it) and outside /tmp
#   --builds K         derivations built at once (nix --max-jobs K) (default 1)
#   --jobs J           make targets and ninja edges per derivation (default 6)
#   --cores C          NIX_BUILD_CORES, i.e. stdenv's -j (default 8)
#   --sleep S          seconds per job (default 0.5)
#   --name NAME        derivation name prefix (default tokend-jobserver-test)
#   --no-parallel      build with enableParallelBuilding = false
#   --features F       requiredSystemFeatures, space-separated (default none)
#   --job CMD          each job runs CMD instead of sleeping (a stand-in compiler)
#   --sandbox-path P   one more sandbox-paths entry, TARGET=SOURCE (repeatable)
#   --keep-going       nix-build --keep-going: a failed build does not stop the others
#   --conf LINE        one more nix.conf line (repeatable; a later line wins)
#   --delays MS        each builder first sleeps a random 0..MS ms, MS < 1000 (default 0)
#   --setup-hook FILE  setup hook to source (default nix/setup-hook.sh)
#   --timeout SEC      limit for nix-build (default 300)
#
# Environment is passed through to Nix and so to the hook (no daemon is used).
#
# Prints on stdout (and into WORK/summary):
#   NIX_VERSION=2.34.8
#   WORK=<dir>
#   ELAPSED_MS=<nix-build wall time>
#   BUILDS_OVERLAP=<most builds running at one time>
#   JOBS_MAX=<most make and ninja jobs running at one time, all builds together>
#   BUILD i=1 name=<drv name> out=<store path> logs=<dir> make_max=3 make_jobs=6 ninja_max=3 ninja_jobs=6 make_auth=<auth> ninja_auth=<auth> fifo_present=yes|no ninja_jobserver=yes|no
# (one BUILD line per derivation). *_max: most jobs running at once; *_jobs:
# jobs that finished; *_auth: the last --jobserver-auth= value in the MAKEFLAGS
# a job saw (fifo:/run/tokend/jobserver.fifo when the build joined tokend's
# FIFO; make -jN without one makes its own fifo:/tmp/GMfifo...; or none);
# fifo_present: the FIFO existed in the sandbox; ninja_jobserver: ninja said
# "Jobserver mode detected". logs=<dir> holds a copy of the build's $out:
# make.log and ninja.log ("S|E <µs> <target>" lines), *.log.env (MAKEFLAGS as a
# job saw it), make.out and ninja.out (tool output).
# Exit status: 0 when nix-build succeeded and every build's logs were read.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

nix_bin='' hook='' tools=${TOKEND_TOOLS_BIN:-} work='' store='' builds=1 jobs=6 cores=8 sleep=0.5
name=tokend-jobserver-test parallel=true setup_hook=$repo/nix/setup-hook.sh timeout_s=300 features= delays_ms=0 job= extra_paths= keep_going= extra_conf=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nix-bin) nix_bin=$2; shift 2 ;;
    --hook) hook=$2; shift 2 ;;
    --tools) tools=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --builds) builds=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --cores) cores=$2; shift 2 ;;
    --sleep) sleep=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --no-parallel) parallel=false; shift ;;
    --features) features=$2; shift 2 ;;
    --delays) delays_ms=$2; shift 2 ;;
    --job) job=$2; shift 2 ;;
    --sandbox-path) extra_paths="$extra_paths $2"; shift 2 ;;
    --keep-going) keep_going=--keep-going; shift ;;
    --conf) extra_conf+=("$2"); shift 2 ;;
    --setup-hook) setup_hook=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    *) echo "sandbox-build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "sandbox-build.sh: $*" >&2; exit 1; }

[ -n "$nix_bin" ] && [ -x "$nix_bin/nix-build" ] || die "--nix-bin DIR with nix-build is required"
[ "$(id -u)" = 0 ] || die "must run as root (sandboxed builds with build users)"
nix_version=$("$nix_bin/nix-build" --version | sed -n 's/.* \([0-9][0-9.]*\)$/\1/p')
[ -n "$nix_version" ] || die "cannot read the version of $nix_bin/nix-build"
if [ -z "$tools" ]; then
  tools=$(bash "$repo/.ci/tools.sh" | tail -1)
fi
[ -x "$tools/make" ] && [ -x "$tools/ninja" ] || die "no make/ninja in $tools"
[ -z "$hook" ] || [ -x "$hook" ] || die "hook $hook is not executable"
busybox=$(readlink -f "$(command -v busybox)") || die "busybox is missing (apt-get install busybox-static)"
bash_bin=$(readlink -f /bin/bash)
libdir=$(readlink -f /lib/x86_64-linux-gnu)
lib64=$(readlink -f /lib64)
[ -n "$store" ] || store=/var/cache/tokend-nix/$nix_version
case "$store" in /nix | /nix/* | /tmp | /tmp/*) die "store $store must be outside /nix and /tmp" ;; esac
[ -n "$work" ] || work=$(mktemp -d /tmp/tokend-nix-XXXXXX)
mkdir -p "$work/conf" "$work/logs" "$store"
work=$(cd "$work" && pwd)

# Sources are resolved (readlink -f): Nix 2.34 copies a symlinked source as a
# symlink, and /lib64 -> usr/lib64 would then dangle in the sandbox.
{
  echo "sandbox = true"
  echo "sandbox-fallback = false"
  echo "build-users-group = nixbld"
  echo "substituters ="
  echo "store = local?root=$store"
  echo "max-jobs = $builds"
  echo "cores = $cores"
  echo "sandbox-paths = /bin/sh=$busybox /bin/busybox=$busybox /bin/bash=$bash_bin /lib/x86_64-linux-gnu=$libdir /lib64=$lib64 /tools/make=$(readlink -f "$tools/make") /tools/ninja=$(readlink -f "$tools/ninja")$extra_paths"
  if [ -n "$hook" ]; then echo "pre-build-hook = $hook"; fi
  for line in ${extra_conf[@]+"${extra_conf[@]}"}; do echo "$line"; done
} >"$work/conf/nix.conf"

delays="[ ]"
if [ "$delays_ms" -gt 0 ]; then
  delays="["
  for _ in $(seq "$builds"); do delays="$delays \"$(printf '0.%03d' $((RANDOM % (delays_ms + 1))))\""; done
  delays="$delays ]"
fi
nonce="$(date +%s%N)-$$-$RANDOM"
start_ns=$(date +%s%N)
rc=0
NIX_CONF_DIR=$work/conf timeout "$timeout_s" "$nix_bin/nix-build" "$here/jobs.nix" --no-out-link $keep_going \
  --argstr nonce "$nonce" --argstr name "$name" --arg builds "$builds" --arg jobs "$jobs" \
  --argstr sleep "$sleep" --arg parallel "$parallel" --arg setupHook "$setup_hook" --argstr features "$features" --arg delays "$delays" --argstr job "$job" \
  >"$work/outs" 2>"$work/nix-build.log" || rc=$?
end_ns=$(date +%s%N)
elapsed_ms=$(((end_ns - start_ns) / 1000000))
if [ "$rc" != 0 ]; then
  tail -n 30 "$work/nix-build.log" >&2
  die "nix-build failed (exit $rc); log: $work/nix-build.log"
fi

# Most events open at once: S opens, E closes, E first on a tie.
max_concurrency() { # $1 log
  [ -s "$1" ] || { echo 0; return; }
  awk '{ print $2, ($1 == "S" ? 1 : 0) }' "$1" | sort -n -k1,1 -k2,2 |
    awk '{ c += ($2 ? 1 : -1); if (c > m) m = c } END { print m + 0 }'
}

# The last --jobserver-auth= in the MAKEFLAGS a job saw, or "none". A make
# given -jN without a jobserver makes its own (fifo:/tmp/GMfifo...).
auth_of() { # $1 *.log.env
  local a
  a=$(sed -n 's/^MAKEFLAGS=//p' "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^--jobserver-auth=//p' | tail -1) || true
  echo "${a:-none}"
}

summary=$work/summary
{
  echo "NIX_VERSION=$nix_version"
  echo "WORK=$work"
  echo "ELAPSED_MS=$elapsed_ms"
} >"$summary"
: >"$work/spans"
: >"$work/all-jobs.log"
i=0
while read -r out; do
  [ -n "$out" ] || continue
  i=$((i + 1))
  phys=$store$out
  [ -d "$phys" ] || die "output $out not found at $phys"
  bname=$(cat "$phys/name")
  logs=$work/logs/$bname
  rm -rf "$logs"
  cp -r "$phys" "$logs"
  chmod -R u+w "$logs"
  mk_max=$(max_concurrency "$logs/make.log")
  nj_max=$(max_concurrency "$logs/ninja.log")
  mk_jobs=$(grep -c '^E ' "$logs/make.log" || true)
  nj_jobs=$(grep -c '^E ' "$logs/ninja.log" || true)
  mk_auth=$(auth_of "$logs/make.log.env")
  nj_auth=$(auth_of "$logs/ninja.log.env")
  njs=no
  grep -q 'Jobserver mode detected' "$logs/ninja.out" 2>/dev/null && njs=yes
  cat "$logs/make.log" "$logs/ninja.log" >>"$work/all-jobs.log"
  cat "$logs/make.log" "$logs/ninja.log" | awk 'NR == 1 || $2 < lo { lo = $2 } $2 > hi { hi = $2 } END { print "S", lo; print "E", hi }' >>"$work/spans"
  adj=$(sed -n 's/^OOM_SCORE_ADJ=//p' "$logs/make.log.env" 2>/dev/null) || true
  echo "BUILD i=$i name=$bname out=$out logs=$logs make_max=$mk_max make_jobs=$mk_jobs ninja_max=$nj_max ninja_jobs=$nj_jobs make_auth=$mk_auth ninja_auth=$nj_auth fifo_present=$(cat "$logs/fifo-present") ninja_jobserver=$njs oom_score_adj=${adj:-none}" >>"$summary"
done <"$work/outs"
[ "$i" = "$builds" ] || die "expected $builds outputs, got $i"
overlap=$(max_concurrency "$work/spans")
sed -i "3a BUILDS_OVERLAP=$overlap\nJOBS_MAX=$(max_concurrency "$work/all-jobs.log")" "$summary"
cat "$summary"
