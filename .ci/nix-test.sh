#!/usr/bin/env bash
# End-to-end test of tokend's Nix side:
#  * every .nix file parses (nix-instantiate --parse, each Nix version);
#  * nix/setup-hook.sh in isolation (testdata/nix/setup-hook-test.sh);
#  * nix/overlay.nix and nix/module.nix evaluated against stubs
#    (testdata/nix/eval-test.nix);
#  * the flake's vendorHash matches `go mod vendor`;
#  * real sandboxed builds (testdata/nix/sandbox-build.sh) on Debian's Nix 2.8
#    and sid's Nix 2.34, each running make 4.4 and ninja 1.13:
#    - with the stand-in hook (testdata/nix/fake-hook.sh), which needs no
#      tokend: N tokens give exactly N+1 jobs and every token comes back; a
#      derivation without enableParallelBuilding stays serial;
#    - with the real tokend, tokenctl and tokend-nix-hook: three builds at
#      once stay within tokend's budget together, each above one job, their
#      leases are named after the derivations, and afterwards no lease is
#      left and no token is missing; with tokend stopped the same builds run
#      unbounded and the hook says nothing; with tokend killed (SIGKILL)
#      mid-build they complete, and the next build runs without the
#      jobserver, the hook saying why on one line;
#    - memory: three -j8 builds that static -j gets OOM-killed in a 1 GiB
#      memory cgroup complete under tokend, builds waiting in their
#      sandboxes; the brake stops the younger of two builds that grow past
#      the brake point (SIGSTOP of its sandbox, or with use-cgroups on
#      Nix >= 2.12 the freeze of Nix's cgroup), never the older, and lets
#      it go again: itself, when tokend stops (Nix 2.8), or at the next
#      start after a SIGKILL (use-cgroups); both complete
#      (testdata/nix/brake-watch.py checks the kernel's side).
# Prints PASS/FAIL lines and ends with "N passed, N failed"; exits non-zero on
# any failure. Under CI=true a missing tool is a failure, never a skip.
# TOKEND_UPDATE_VENDOR_HASH=1 rewrites a stale vendorHash in nix/overlay.nix.
# TOKEND_NIX_TEST_KEEP=1 keeps the work directory (logs) even on success.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$(pwd)
export PATH=/usr/local/go/bin:$PATH

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1${2:+: $2}"; }
missing() { # a missing tool: a failure under CI, a skip elsewhere
  if [ "${CI:-}" = true ]; then
    fail "$1" "$2 (a missing tool fails under CI=true)"
  else
    skipped=$((skipped + 1))
    echo "SKIP $1: $2"
  fi
}
summary() {
  echo "nix-test: $(($(date +%s) - t0)) s; work directory: $work"
  if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
  else
    echo "$passed passed, $failed failed"
  fi
}
t0=$(date +%s)

work=$(mktemp -d /tmp/tokend-nix-test.XXXXXX)
states=()
tokend_pid='' sampler_pid=''
cleanup() {
  local s
  for s in ${states[@]+"${states[@]}"}; do
    bash testdata/nix/fake-hook.sh --cleanup "$s" 2>/dev/null || true
  done
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null; fi
  if [ -n "$tokend_pid" ]; then kill "$tokend_pid" 2>/dev/null; wait "$tokend_pid" 2>/dev/null; fi
  if [ "$failed" = 0 ] && [ -z "${TOKEND_NIX_TEST_KEEP:-}" ]; then
    rm -rf "$work"
  fi
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
  missing "root" "sandboxed Nix builds need root"
  summary
  [ "$failed" = 0 ]
  exit
fi

# --- installation ------------------------------------------------------------
step=$(date +%s)
if env_out=$(bash .ci/nix.sh 2>"$work/nix.sh.log"); then
  pass "install: .ci/nix.sh ($(($(date +%s) - step)) s)"
else
  fail "install: .ci/nix.sh" "$(tail -5 "$work/nix.sh.log")"
  summary
  exit 1
fi
val() { printf '%s\n' "$env_out" | sed -n "s/^$1=//p" | tail -1; }
NIX28_BIN=$(val NIX28_BIN) NIX234_BIN=$(val NIX234_BIN)
sed 's/^/  /' "$work/nix.sh.log"

step=$(date +%s)
tools=${TOKEND_TOOLS_BIN:-}
if [ -z "$tools" ]; then
  tools=$(bash .ci/tools.sh 2>"$work/tools.sh.log" | tail -1) || tools=
fi
if [ -n "$tools" ] && [ -x "$tools/make" ] && [ -x "$tools/ninja" ]; then
  pass "install: make $("$tools/make" --version | head -1 | awk '{print $3}') and ninja $("$tools/ninja" --version) ($(($(date +%s) - step)) s)"
else
  fail "install: .ci/tools.sh" "no make/ninja; see $work/tools.sh.log"
  tools=
fi

nixes=()
if [ -x "$NIX28_BIN/nix-build" ]; then
  nixes+=("$NIX28_BIN")
else
  missing "nix 2.8" "Debian's nix-bin is not installed"
fi
if [ -n "$NIX234_BIN" ] && [ -x "$NIX234_BIN/nix-build" ]; then
  nixes+=("$NIX234_BIN")
else
  missing "nix 2.34" "sid's Nix could not be prepared (see .ci/nix.sh's messages above)"
fi
nix_version() { "$1/nix-build" --version | sed -n 's/.* \([0-9][0-9.]*\)$/\1/p'; }

# --- static checks -----------------------------------------------------------
nix_files=$(find . -name '*.nix' -not -path './.git/*' -not -path './bench-out/*' | sort)
for nb in ${nixes[@]+"${nixes[@]}"}; do
  bad=
  for f in $nix_files; do
    "$nb/nix-instantiate" --parse "$f" >/dev/null 2>"$work/parse.err" || bad="$bad $f: $(head -3 "$work/parse.err")"
  done
  if [ -z "$bad" ]; then
    pass "parse: $(echo "$nix_files" | wc -l) .nix files with Nix $(nix_version "$nb")"
  else
    fail "parse with Nix $(nix_version "$nb")" "$bad"
  fi
done

if bash testdata/nix/setup-hook-test.sh >"$work/setup-hook-test.log" 2>&1; then
  pass "setup hook in isolation: $(tail -1 "$work/setup-hook-test.log")"
else
  fail "setup hook in isolation" "$(grep -A3 '^FAIL' "$work/setup-hook-test.log" | head -20; tail -1 "$work/setup-hook-test.log")"
fi

if [ ${#nixes[@]} -gt 0 ]; then
  nb=${nixes[${#nixes[@]} - 1]}
  if out=$("$nb/nix-instantiate" --eval --strict testdata/nix/eval-test.nix 2>&1); then
    pass "overlay and module against stubs: $out"
  else
    fail "overlay and module against stubs" "$out"
  fi
fi

# vendorHash: the NAR hash of `go mod vendor`, as nixpkgs' buildGoModule computes it.
vendor_check() {
  local want got tmp nb=$1
  want=$(sed -n 's/^ *vendorHash = \(.*\);.*/\1/p' nix/overlay.nix | head -1)
  if ! command -v go >/dev/null; then
    missing "vendorHash" "no go"
    return
  fi
  tmp=$work/vendor-check
  mkdir -p "$tmp"
  tar -C "$repo" --exclude=./.git --exclude=./bench-out --exclude=./vendor -cf - . | tar -C "$tmp" -xf -
  if [ -d "$repo/vendor" ]; then
    got=null
  elif ! grep -q '^require\|^	[a-z]' go.mod; then
    got=null
  elif (cd "$tmp" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod vendor) >"$work/vendor.log" 2>&1; then
    got=\"$("$nb/nix" --extra-experimental-features nix-command hash path --type sha256 "$tmp/vendor")\"
  else
    fail "vendorHash" "go mod vendor failed: $(tail -3 "$work/vendor.log")"
    return
  fi
  if [ "$want" = "$got" ]; then
    pass "vendorHash in nix/overlay.nix matches go.mod/go.sum ($got)"
  elif [ "${TOKEND_UPDATE_VENDOR_HASH:-}" = 1 ]; then
    sed -i "s|^\( *vendorHash = \).*;|\1$got;|" nix/overlay.nix
    pass "vendorHash rewritten in nix/overlay.nix: $want -> $got"
  else
    fail "vendorHash" "nix/overlay.nix has $want, go.mod/go.sum need $got; run TOKEND_UPDATE_VENDOR_HASH=1 bash .ci/nix-test.sh"
  fi
}
if [ ${#nixes[@]} -gt 0 ]; then vendor_check "${nixes[${#nixes[@]} - 1]}"; fi

# --- the real tokend, tokenctl and tokend-nix-hook ---------------------------
bin=$work/bin
step=$(date +%s)
if ! command -v go >/dev/null; then
  missing "build tokend, tokenctl, tokend-nix-hook" "no go"
  bin=
elif go build -o "$bin/" ./cmd/tokend ./cmd/tokenctl ./cmd/tokend-nix-hook >"$work/go-build.log" 2>&1 \
  && CGO_ENABLED=0 go build -o "$bin/" ./internal/fakecc >>"$work/go-build.log" 2>&1; then
  pass "build: tokend, tokenctl and tokend-nix-hook ($(($(date +%s) - step)) s)"
else
  fail "build tokend, tokenctl, tokend-nix-hook" "$(tail -5 "$work/go-build.log")"
  bin=
fi
if [ -n "$bin" ] && ! command -v python3 >/dev/null; then
  missing "python3" "reads tokenctl status --json"
  bin=
fi

# The broker's budget for three builds of 8 jobs each, which would run 24
# jobs at once unbounded.
budget=6
# tokend_start RUNTIME_DIR [BUDGET]: runs tokend in the background with that
# runtime directory (and budget, default $budget) and waits until it answers;
# sock is its socket.
tokend_start() {
  sock=$1/tokend.sock
  "$bin/tokend" --tokens "${2:-$budget}" --runtime-dir "$1" --state-dir "$work/state" --log-level debug >>"$work/tokend.log" 2>&1 &
  tokend_pid=$!
  local _
  for _ in $(seq 100); do
    "$bin/tokenctl" --socket "$sock" status >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}
tokend_stop() { # $1: signal
  kill -"$1" "$tokend_pid"
  wait "$tokend_pid" 2>/dev/null
  tokend_pid=
}
# Samples tokenctl status --json into $1 every 100 ms until sampler_stop.
sampler_start() {
  (while :; do "$bin/tokenctl" --socket "$sock" status --json >>"$1" 2>/dev/null; sleep 0.1; done) &
  sampler_pid=$!
}
sampler_stop() {
  kill "$sampler_pid"
  wait "$sampler_pid" 2>/dev/null
  sampler_pid=
}
# leases_seen SAMPLES NAME BUILDS: every lease the samples show; succeeds if
# BUILDS leases named NAME with features [big-parallel] were seen, one owned
# by the sandbox of each derivation NAME-1 ... NAME-BUILDS, and the memory
# controller found processes confined to each sandbox at some point.
leases_seen() {
  python3 - "$@" <<'EOF'
import json, re, sys
path, name, builds = sys.argv[1], sys.argv[2], int(sys.argv[3])
data, dec, i, leases, samples, procs = open(path).read(), json.JSONDecoder(), 0, {}, 0, {}
while True:
    while i < len(data) and data[i].isspace():
        i += 1
    if i == len(data):
        break
    st, i = dec.raw_decode(data, i)
    samples += 1
    for l in st["leases"]:
        leases[l["id"]] = l
        procs[l["id"]] = max(procs.get(l["id"], 0), (l.get("memory") or {}).get("procs", 0))
mine = [l for l in leases.values() if l["name"] == name and l.get("features") == ["big-parallel"]]
builds_seen = sorted(m.group(1) for l in mine if (m := re.search(r"-%s-(\d+)\.drv\.chroot(/root)?$" % re.escape(name), l["owner"]["dir"])))
sampled = [procs[l["id"]] for l in mine]
print("%d samples: %d leases, %d named %s with features [big-parallel], owned by the sandboxes of builds %s; most processes sampled in each sandbox: %s"
      % (samples, len(leases), len(mine), name, ",".join(builds_seen) or "none", ",".join(map(str, sampled)) or "none"))
sys.exit(0 if len(leases) == builds and builds_seen == [str(b) for b in range(1, builds + 1)] and all(n > 0 for n in sampled) else 1)
EOF
}
# settled: waits up to 10 s for the sandboxes to go and tokend to end their
# leases; succeeds if then no lease is left, no token granted, none
# reclaimed (lost by a build) and the accounting never broke.
settled() {
  local _ out
  for _ in $(seq 50); do
    out=$("$bin/tokenctl" --socket "$sock" status --json 2>&1 | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("leases=%d granted=%d reclaimed_total=%d invariant_violations=%d" % (len(s["leases"]), s["granted"], s["reclaimed_total"], s["invariant_violations"]))
sys.exit(0 if not s["leases"] and s["granted"] == 0 and s["reclaimed_total"] == 0 and s["invariant_violations"] == 0 else 1)
') && { echo "$out"; return 0; }
    sleep 0.2
  done
  echo "$out"
  return 1
}
hook_lines() { grep -c '^tokend-nix-hook:' "$work/$1/nix-build.log"; } # $1 label

# --- real sandboxed builds ---------------------------------------------------
fifo_path=/run/tokend/jobserver.fifo
# sandbox NIXBIN LABEL TOKENS BUILDS [harness args...]: runs the harness with
# the fake hook; leaves the summary in $sum and the FIFO report in $rep.
sandbox() {
  local nb=$1 label=$2 tokens=$3 builds=$4
  shift 4
  local state=$work/state-$label
  mkdir -p "$state"
  states+=("$state")
  sum=$work/$label.summary rep=$work/$label.fifos
  local step rc=0
  step=$(date +%s%N)
  TOKEND_FAKE_HOOK_STATE=$state TOKEND_FAKE_HOOK_TOKENS=$tokens \
    bash testdata/nix/sandbox-build.sh --nix-bin "$nb" --hook "$repo/testdata/nix/fake-hook.sh" \
    --tools "$tools" --work "$work/$label" --builds "$builds" --name "tokend-$label" "$@" \
    >"$sum" 2>"$work/$label.err" || rc=$?
  elapsed=$((($(date +%s%N) - step) / 1000000))
  bash testdata/nix/fake-hook.sh --report "$state" >"$rep"
  bash testdata/nix/fake-hook.sh --cleanup "$state"
  return $rc
}
# real NIXBIN LABEL BUILDS [harness args...]: runs the harness with the real
# tokend-nix-hook and TOKEND_SOCKET=$sock (nix-build runs the build itself, no
# daemon, so the hook gets its environment); leaves the summary in $sum.
real() {
  local nb=$1 label=$2 builds=$3
  shift 3
  sum=$work/$label.summary
  local step rc=0
  step=$(date +%s%N)
  TOKEND_SOCKET=$sock bash testdata/nix/sandbox-build.sh --nix-bin "$nb" --hook "$bin/tokend-nix-hook" \
    --tools "$tools" --work "$work/$label" --builds "$builds" --name "tokend-$label" "$@" \
    >"$sum" 2>"$work/$label.err" || rc=$?
  elapsed=$((($(date +%s%N) - step) / 1000000))
  return $rc
}
# field KEY: that key's values across the BUILD lines, one per line
field() { sed -n "s/^BUILD .* $1=\([^ ]*\).*/\1/p" "$sum"; }
all_eq() { # KEY WANT: every build's KEY is WANT
  local v
  v=$(field "$1" | sort -u)
  [ "$v" = "$2" ] || { why="$1=$(echo "$v" | tr '\n' ' ')(want $2)"; return 1; }
}
all_gt() { # KEY MIN: every build's KEY is above MIN
  local v
  for v in $(field "$1"); do
    [ "$v" -gt "$2" ] || { why="$1=$(field "$1" | tr '\n' ' ')(want all > $2)"; return 1; }
  done
}
summary_val() { sed -n "s/^$1=//p" "$sum"; }

# brake MODE NIXBIN LABEL [harness args...]: the memory brake on two real
# nix builds in a 1.5 GiB memory cgroup, started together as builds are:
# both are admitted while small (tokend's default estimate of 128 MiB a
# job), then their jobs (700 and 600 MiB) grow past the brake point
# (headroom under half of a 512 MiB reserve). tokend must stop or freeze
# the young build, never the old one, and both complete without an OOM
# kill. MODE says who lets the young build go on: thaw, the brake itself
# once the old job is done; term, tokend stopping (SIGTERM); kill, the
# next tokend after a SIGKILL. Sets watched, or why on failure.
brake() {
  local mode=$1 nb=$2 label=$3
  shift 3
  local cg=/sys/fs/cgroup/memory/tokend-nixbrake-$$-$label brt=$work/rt-$label rc_old=0 rc_young=0 old young held at since watcher _
  if ! { mkdir "$cg" && echo $((1536 << 20)) >"$cg/memory.limit_in_bytes"; }; then
    why="cannot make the memory cgroup $cg"
    return 1
  fi
  brake_tokend() {
    "$bin/tokend" --runtime-dir "$brt" --state-dir "$work/state-$label" --memory-cgroup "$cg" --memory-reserve 512MiB \
      --job-estimate 128MiB --growth-interval 1s --log-level debug >>"$work/tokend-$label.log" 2>&1 &
    tokend_pid=$!
    sock=$brt/tokend.sock
    for _ in $(seq 100); do "$bin/tokenctl" --socket "$sock" status >/dev/null 2>&1 && break; sleep 0.05; done
  }
  build() { # ROLE JOB: one build of one job inside $cg, in the background
    (echo "$BASHPID" >"$cg/cgroup.procs" && TOKEND_SOCKET=$sock exec bash testdata/nix/sandbox-build.sh --nix-bin "$nb" \
      --hook "$bin/tokend-nix-hook" --tools "$tools" --work "$work/$label-$1" --builds 1 --jobs 1 --cores 8 \
      --name "tokend-$label-$1" --job "$2" --sandbox-path "/tools/fakecc=$bin/fakecc" "${@:3}" \
      >"$work/$label-$1.summary" 2>"$work/$label-$1.err") &
  }
  brake_tokend
  build old "/tools/fakecc -peak 700 -ramp 100 -hold 10" "$@"
  old=$!
  # The young build registers once the old one has: which is older is then
  # known, and both are admitted while their jobs are still small.
  for _ in $(seq 600); do
    "$bin/tokenctl" --socket "$sock" status --json 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if any(l["name"] == sys.argv[1] for l in json.load(sys.stdin)["leases"]) else 1)' "tokend-$label-old" && break
    kill -0 "$old" 2>/dev/null || break
    sleep 0.1
  done
  build young "/tools/fakecc -peak 600 -ramp 200 -hold 1" "$@"
  young=$!
  local watch=testdata/nix/brake-watch.py
  case $mode in
    thaw)
      watched=$(python3 "$watch" watch "$bin/tokenctl" "$sock" "tokend-$label-old" "tokend-$label-young" "$old" "$young") || why="brake: $watched"
      ;;
    term)
      if held=$(python3 "$watch" frozen "$bin/tokenctl" "$sock" "tokend-$label-young" 120); then
        since=$(date +%s%3N)
        tokend_stop TERM
        at=$(python3 "$watch" resumed "$held" 10) || why="after tokend stopped: $at"
        watched="young build held ($held), running again $((at - since)) ms after SIGTERM to tokend"
      else
        why=$held
      fi
      ;;
    kill)
      if held=$(python3 "$watch" frozen "$bin/tokenctl" "$sock" "tokend-$label-young" 120); then
        tokend_stop KILL
        sleep 1
        if python3 "$watch" resumed "$held" 0 >/dev/null; then
          why="the young build ran again with tokend dead, before any restart"
        else
          # Watched from before the start: once the next tokend has let it
          # go, its brake may well hold it again a tick later.
          python3 "$watch" resumed "$held" 15 >"$work/$label.resumed" &
          watcher=$!
          sleep 0.5
          since=$(date +%s%3N)
          brake_tokend
          wait "$watcher" || why="after the restart: $(cat "$work/$label.resumed")"
          watched="young build held ($held), still held 1 s after tokend was killed (SIGKILL), running again $(($(cat "$work/$label.resumed") - since)) ms after the next tokend was started"
        fi
      else
        why=$held
      fi
      ;;
  esac
  wait "$old" || rc_old=$?
  wait "$young" || rc_young=$?
  kills=$(sed -n 's/^oom_kill //p' "$cg/memory.oom_control")
  [ -z "$tokend_pid" ] || tokend_stop TERM
  rmdir "$cg"
  [ -z "$why" ] || return 1
  [ "$rc_old" = 0 ] && [ "$rc_young" = 0 ] || { why="builds exited $rc_old (old) and $rc_young (young): $(tail -3 "$work/$label-young.err")"; return 1; }
  [ "$kills" = 0 ] || { why="$kills OOM kills; $watched"; return 1; }
}

if [ -n "$tools" ]; then
  for nb in ${nixes[@]+"${nixes[@]}"}; do
    ver=$(nix_version "$nb")
    v=nix${ver//./}

    # --- with the stand-in hook: the sandbox side alone ---
    name="Nix $ver, stand-in hook: N=2 tokens, one build"
    why=
    if sandbox "$nb" "$v-n2" 2 1; then
      if all_eq make_max 3 && all_eq ninja_max 3 && all_eq make_jobs 6 && all_eq ninja_jobs 6 \
        && all_eq make_auth "fifo:$fifo_path" && all_eq ninja_jobserver yes && all_eq fifo_present yes \
        && { [ "$(grep -c "tokens=2 available=2 " "$rep")" = 1 ] || { why="tokens not all back: $(cat "$rep")"; false; }; }; then
        pass "$name: make and ninja reach 3 jobs, 2 tokens back in the FIFO (${elapsed} ms)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-n2.err")"
    fi

    name="Nix $ver, stand-in hook: FIFO present, enableParallelBuilding off"
    why=
    if sandbox "$nb" "$v-serial" 2 1 --no-parallel --sleep 0.2; then
      if all_eq fifo_present yes && all_eq make_max 1 && all_eq ninja_max 1 && all_eq make_jobs 6 \
        && all_eq ninja_jobs 6 && all_eq make_auth none \
        && { [ "$(grep -c 'tokens=2 available=2 ' "$rep")" = 1 ] || { why="tokens: $(cat "$rep")"; false; }; }; then
        pass "$name: stays serial (1 job at a time), FIFO untouched (${elapsed} ms)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-serial.err")"
    fi

    [ -n "$bin" ] || continue
    # --- with the real tokend and hook ---
    # The runtime directory sits in $work (mode 0700): build users need no
    # way to the FIFOs, Nix maps them as root.
    rt=$work/rt-$v
    name="Nix $ver, tokend: three builds at once, budget $budget"
    why=
    if ! tokend_start "$rt"; then
      fail "$name" "tokend did not start: $(tail -5 "$work/tokend.log")"
      continue
    fi
    sampler_start "$work/$v-real.samples"
    rc=0
    real "$nb" "$v-real" 3 --jobs 8 --cores 8 --features big-parallel || rc=$?
    sampler_stop
    if [ "$rc" = 0 ]; then
      peak=$(summary_val JOBS_MAX)
      seen=$(leases_seen "$work/$v-real.samples" "tokend-$v-real" 3) || why="leases: $seen"
      if [ -z "$why" ] && { [ "$peak" -le "$budget" ] || { why="$peak jobs at once over a budget of $budget"; false; }; } \
        && all_gt make_max 1 && all_gt ninja_max 1 && all_eq make_jobs 8 && all_eq ninja_jobs 8 \
        && all_eq fifo_present yes && all_eq make_auth "fifo:$fifo_path" && all_eq ninja_jobserver yes \
        && { [ "$(hook_lines "$v-real")" = 0 ] || { why="the hook complained: $(grep '^tokend-nix-hook:' "$work/$v-real/nix-build.log")"; false; }; } \
        && { left=$(settled) || { why="afterwards: $left"; false; }; }; then
        pass "$name: at most $peak jobs at once across the builds (per build: make $(field make_max | paste -sd,), ninja $(field ninja_max | paste -sd,)); $seen; afterwards $left (${elapsed} ms)"
      else
        fail "$name" "$why; $(grep -E '^(JOBS_MAX|BUILD)' "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-real.err")"
    fi

    # The invariant: builds that joined never run more jobs than the budget,
    # however they are timed. Each builder starts after a random 0-300 ms.
    name="Nix $ver, tokend: budget 5 is a bound for three builds started 0-300 ms apart, 20 times"
    why=
    tokend_stop TERM
    if ! tokend_start "$rt" 5; then
      fail "$name" "tokend did not start: $(tail -5 "$work/tokend.log")"
      continue
    fi
    peaks='' bad=''
    for run in $(seq 20); do
      if real "$nb" "$v-bound-$run" 3 --jobs 4 --sleep 0.3 --delays 300; then
        peaks="$peaks $(summary_val JOBS_MAX)"
        all_eq make_jobs 4 && all_eq ninja_jobs 4 && all_eq make_auth "fifo:$fifo_path" && all_eq oom_score_adj 500 \
          || bad="$bad run $run: $why;"
      else
        bad="$bad run $run: harness failed: $(tail -3 "$work/$v-bound-$run.err");"
      fi
    done
    peak=$(echo "$peaks" | tr ' ' '\n' | sort -n | tail -1)
    waited=$(grep -c 'lease admitted:.*waited=[1-9]' "$work/tokend.log")
    if [ -z "$bad" ] && [ "${peak:-99}" -le 5 ] && { left=$(settled) || { bad="afterwards: $left"; false; }; }; then
      pass "$name: most jobs at once per run:$peaks (max $peak); $waited admissions in this log waited for room; every job ran with oom_score_adj 500; afterwards $left"
    else
      fail "$name" "max $peak jobs at once (per run:$peaks);$bad"
    fi
    tokend_stop TERM
    tokend_start "$rt" || { fail "$name" "tokend did not restart"; continue; }

    # use-cgroups (Nix >= 2.12, with auto-allocate-uids): Nix records the
    # build's cgroup before the hook runs; the lease must carry it and be
    # sampled from it, so the brake freezes that group.
    cgroups=(--store "/var/cache/tokend-nix-cg/$ver" --conf "build-users-group =" --conf "auto-allocate-uids = true"
      --conf "experimental-features = nix-command auto-allocate-uids cgroups" --conf "use-cgroups = true")
    if [ "$(printf '%s\n2.12\n' "$ver" | sort -V | head -1)" = 2.12 ]; then
      name="Nix $ver, use-cgroups: the lease carries the build's cgroup and is sampled from it"
      why=
      sampler_start "$work/$v-cg.samples"
      rc=0
      real "$nb" "$v-cg" 1 --jobs 4 --sleep 0.5 "${cgroups[@]}" || rc=$?
      sampler_stop
      seen=$(python3 - "$work/$v-cg.samples" <<'EOF2'
import json, sys
data, dec, i, best = open(sys.argv[1]).read(), json.JSONDecoder(), 0, {}
while True:
    while i < len(data) and data[i].isspace():
        i += 1
    if i == len(data):
        break
    st, i = dec.raw_decode(data, i)
    for l in st["leases"]:
        n = (l.get("memory") or {}).get("procs", 0)
        if l.get("cgroup", "").split("/")[-1].startswith("nix-build-uid-") and n > best.get(l["cgroup"], 0):
            best[l["cgroup"]] = n
print(" ".join("%s (%d processes)" % kv for kv in best.items()))
sys.exit(0 if best else 1)
EOF2
      ) || why="no lease with a nix-build-uid cgroup and sampled processes"
      if [ "$rc" = 0 ] && [ -z "$why" ] && all_eq make_jobs 4 && all_eq make_auth "fifo:$fifo_path"; then
        pass "$name: $seen"
      else
        fail "$name" "exit $rc; $why; $(grep ^BUILD "$sum" 2>/dev/null); $(tail -3 "$work/$v-cg.err")"
      fi
    fi

    name="Nix $ver, tokend stopped: three builds"
    why=
    tokend_stop TERM
    if [ -e "$sock" ]; then
      fail "$name" "tokend left its socket $sock behind on SIGTERM"
    elif real "$nb" "$v-stopped" 3 --jobs 8 --cores 8; then
      if all_eq fifo_present no && all_eq make_max 8 && all_eq ninja_max 8 && all_eq make_jobs 8 && all_eq ninja_jobs 8 \
        && all_eq ninja_jobserver no \
        && { [ "$(hook_lines "$v-stopped")" = 0 ] || { why="the hook spoke: $(grep '^tokend-nix-hook:' "$work/$v-stopped/nix-build.log")"; false; }; }; then
        pass "$name: hook silent, builds unbounded (make and ninja 8 of 8 jobs at once, $(summary_val JOBS_MAX) across builds) (${elapsed} ms)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-stopped.err")"
    fi

    # Budget 1: the first build to ask runs alone, the others wait in their
    # sandboxes; SIGKILL tokend then, and every build must go on by itself.
    name="Nix $ver, tokend killed while builds wait in their sandboxes"
    why=
    if ! tokend_start "$rt" 1; then
      fail "$name" "tokend did not start: $(tail -5 "$work/tokend.log")"
      continue
    fi
    real "$nb" "$v-waitkill" 3 --jobs 4 --sleep 0.3 &
    harness=$!
    waiting=0
    for _ in $(seq 300); do
      waiting=$("$bin/tokenctl" --socket "$sock" status --json 2>/dev/null \
        | python3 -c 'import json, sys; print(sum(1 for l in json.load(sys.stdin)["leases"] if l["state"] == "waiting"))' 2>/dev/null)
      [ "${waiting:-0}" -ge 2 ] && break
      kill -0 "$harness" 2>/dev/null || break
      sleep 0.05
    done
    tokend_stop KILL
    killed_us=$(date +%s%6N)
    rc=0
    wait "$harness" || rc=$?
    sum=$work/$v-waitkill.summary
    if [ "$rc" = 0 ] && [ "${waiting:-0}" -ge 2 ]; then
      starts=
      for logs in $(field logs); do
        first=$(sort -n -k2,2 "$logs/make.log" | awk '$1 == "S" { print $2; exit }')
        starts="$starts $(((first - killed_us) / 1000))"
      done
      if all_eq make_jobs 4 && all_eq ninja_jobs 4 && grep -q 'running without its jobserver' "$work/$v-waitkill/nix-build.log"; then
        pass "$name: $waiting builds were waiting; all complete (first jobs of each build started at ms after the kill:$starts)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum"); $(grep -c 'running without its jobserver' "$work/$v-waitkill/nix-build.log") builds said they went on without tokend"
      fi
    else
      fail "$name" "harness exit $rc, $waiting builds seen waiting: $(tail -5 "$work/$v-waitkill.err")"
    fi

    name="Nix $ver, tokend killed mid-build: three builds"
    why=
    if ! tokend_start "$rt"; then
      fail "$name" "tokend did not restart: $(tail -5 "$work/tokend.log")"
      continue
    fi
    real "$nb" "$v-killed" 3 --jobs 8 --cores 8 &
    harness=$!
    # Kill it as soon as every build has joined its FIFO and been admitted,
    # so the ninja that follows make in each build opens its FIFO after
    # tokend is gone. A FIFO on disk is not enough: tokend makes it before
    # the hook has its answer, and a build whose hook got none rightly runs
    # without tokend.
    for _ in $(seq 300); do
      joined=$("$bin/tokenctl" --socket "$sock" status --json 2>/dev/null \
        | python3 -c 'import json, sys; print(sum(1 for l in json.load(sys.stdin)["leases"] if l["state"] == "running" and l["name"] == sys.argv[1]))' "tokend-$v-killed" 2>/dev/null)
      [ "${joined:-0}" -ge 3 ] && break
      kill -0 "$harness" 2>/dev/null || break
      sleep 0.05
    done
    tokend_stop KILL
    killed_us=$(date +%s%6N)
    rc=0
    wait "$harness" || rc=$?
    sum=$work/$v-killed.summary
    if [ "${joined:-0}" -lt 3 ]; then
      fail "$name" "only ${joined:-0} of 3 builds were running under tokend when it was killed"
    elif [ "$rc" = 0 ]; then
      after=
      for logs in $(field logs); do
        first=$(sort -n -k2,2 "$logs/make.log" "$logs/ninja.log" | awk '$1 == "S" { print $2; exit }')
        last=$(awk '$1 == "S" && $2 > m { m = $2 } END { print m }' "$logs/ninja.log")
        after="$after $(((first - killed_us) / 1000))..$(((last - killed_us) / 1000))"
      done
      if all_eq make_jobs 8 && all_eq ninja_jobs 8 && all_eq fifo_present yes && all_eq make_auth "fifo:$fifo_path"; then
        pass "$name: all complete (jobs of each build started from/to ms after the kill:$after)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-killed.err")"
    fi

    name="Nix $ver, stale socket of the killed tokend: one build"
    why=
    if real "$nb" "$v-stale" 1 --jobs 4 --sleep 0.2; then
      said=$(grep '^tokend-nix-hook:' "$work/$v-stale/nix-build.log")
      if all_eq fifo_present no && all_eq make_max 4 && all_eq make_jobs 4 && all_eq ninja_jobs 4 \
        && { [ "$(hook_lines "$v-stale")" = 1 ] && [[ "$said" == *"nothing answers on tokend's socket $sock"* ]] || { why="hook said: ${said:-nothing}"; false; }; }; then
        pass "$name: runs unbounded; the hook said: $said (${elapsed} ms)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-stale.err")"
    fi
    rm -rf "$rt"

    # Memory holds nix builds back: three builds of -j8 stand-in compiles
    # of 300 MiB each in a 1 GiB memory cgroup (nix-build and so the
    # sandboxes run inside it). Without tokend the kernel OOM-kills jobs;
    # with tokend on its defaults, pointed at that cgroup, nothing is
    # killed, every build completes and builds wait in their sandboxes.
    name="Nix $ver, memory admission: three -j8 builds of 300 MiB jobs in 1 GiB"
    why=
    cg=/sys/fs/cgroup/memory/tokend-nixtest-$$-$v
    job="/tools/fakecc -peak 300 -ramp 600 -hold 0.3"
    oom_kills() { sed -n 's/^oom_kill //p' "$cg/memory.oom_control"; }
    memrun() { # LABEL HOOK: a harness run inside $cg; leaves its OOM kills in $kills
      local rc=0 before
      before=$(oom_kills)
      (echo "$BASHPID" >"$cg/cgroup.procs" && TOKEND_SOCKET=$sock bash testdata/nix/sandbox-build.sh --nix-bin "$nb" \
        ${2:+--hook "$2"} --tools "$tools" --work "$work/$1" --builds 3 --jobs 3 --cores 8 --name "tokend-$1" \
        --keep-going --job "$job" --sandbox-path "/tools/fakecc=$bin/fakecc" >"$work/$1.summary" 2>"$work/$1.err") || rc=$?
      kills=$(($(oom_kills) - before))
      return $rc
    }
    if [ ! -d /sys/fs/cgroup/memory ]; then
      missing "$name" "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
    elif ! { mkdir -p "$cg" && echo $((1 << 30)) >"$cg/memory.limit_in_bytes"; }; then
      fail "$name" "cannot make the memory cgroup $cg"
    else
      static_rc=0
      memrun "$v-mem-static" "" || static_rc=$?
      static_kills=$kills
      mrt=$work/rt-$v-mem
      "$bin/tokend" --runtime-dir "$mrt" --state-dir "$work/state-mem" --memory-cgroup "$cg" --log-level debug >>"$work/tokend-mem.log" 2>&1 &
      tokend_pid=$!
      sock=$mrt/tokend.sock
      for _ in $(seq 100); do "$bin/tokenctl" --socket "$sock" status >/dev/null 2>&1 && break; sleep 0.05; done
      "$bin/tokenctl" --socket "$sock" status >/dev/null 2>&1 || fail "$name" "tokend did not start: $(tail -3 "$work/tokend-mem.log")"
      sampler_start "$work/$v-mem.samples"
      rc=0
      memrun "$v-mem-tokend" "$bin/tokend-nix-hook" || rc=$?
      sampler_stop
      tokend_stop TERM
      rmdir "$cg"
      sum=$work/$v-mem-tokend.summary
      waits=$(grep -c '"state": "waiting"' "$work/$v-mem.samples")
      if [ "$static_kills" -gt 0 ] && [ "$rc" = 0 ] && [ "$kills" = 0 ] && [ "$waits" -gt 0 ] \
        && all_eq make_jobs 3 && all_eq ninja_jobs 3 && all_eq make_auth "fifo:$fifo_path"; then
        pass "$name: static -j8 had $static_kills OOM kills (nix-build exit $static_rc); under tokend 0 kills, all complete, a build waiting in $waits status samples, at most $(summary_val JOBS_MAX) jobs at once"
      else
        fail "$name" "static: $static_kills kills; tokend: exit $rc, ${kills:-?} kills, $waits waiting samples; $why $(tail -3 "$work/$v-mem-tokend.err")"
      fi
    fi

    # The brake: on every version it stops a build without a cgroup; with
    # use-cgroups it freezes Nix's cgroup. The young build is let go by the
    # brake, by tokend stopping (Nix 2.8) and by the next tokend after a
    # SIGKILL (use-cgroups).
    brake_case() { # MODE LABEL TITLE [harness args...]
      name="Nix $ver, $3"
      why=
      if [ ! -d /sys/fs/cgroup/memory ]; then
        missing "$name" "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
      elif brake "$1" "$nb" "$v-$2" "${@:4}"; then
        pass "$name: $watched; both complete, 0 OOM kills"
      else
        fail "$name" "$why"
      fi
    }
    brake_case thaw brake "brake: the young build is stopped and resumed, the old one never"
    if [ "$(printf '%s\n2.12\n' "$ver" | sort -V | head -1)" = 2.12 ]; then
      brake_case thaw cgbrake "use-cgroups, brake: the young build's cgroup is frozen and thawed, the old one never" "${cgroups[@]}"
      brake_case kill cgkill "use-cgroups, brake: a build tokend froze before a SIGKILL is thawed by the next tokend" "${cgroups[@]}"
    else
      brake_case term stopterm "brake: a build tokend stopped is resumed when tokend stops"
    fi
  done
fi

[ "$failed" = 0 ] || TOKEND_NIX_TEST_KEEP=1
summary
[ "$failed" = 0 ]
