#!/usr/bin/env bash
# End-to-end test of tokend's Nix side, with testdata/nix/fake-hook.sh standing
# in for the Go pre-build-hook:
#  * every .nix file parses (nix-instantiate --parse, each Nix version);
#  * nix/setup-hook.sh in isolation (testdata/nix/setup-hook-test.sh);
#  * nix/overlay.nix and nix/module.nix evaluated against stubs
#    (testdata/nix/eval-test.nix);
#  * the flake's vendorHash matches `go mod vendor`;
#  * real sandboxed builds (testdata/nix/sandbox-build.sh) on Debian's Nix 2.8
#    and sid's Nix 2.34: with N tokens, make 4.4 and ninja 1.13 inside the
#    sandbox reach exactly N+1 jobs and every token is back afterwards; three
#    builds at once; a hook that prints nothing leaves builds unbounded; a
#    derivation without enableParallelBuilding stays serial.
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
cleanup() {
  local s
  for s in ${states[@]+"${states[@]}"}; do
    bash testdata/nix/fake-hook.sh --cleanup "$s" 2>/dev/null || true
  done
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

# --- real sandboxed builds ---------------------------------------------------
fifo_path=/run/tokend/jobserver.fifo
# sandbox NIXBIN LABEL TOKENS MODE BUILDS [harness args...]: runs the harness
# with the fake hook; leaves the summary in $sum and the FIFO report in $rep.
sandbox() {
  local nb=$1 label=$2 tokens=$3 mode=$4 builds=$5
  shift 5
  local state=$work/state-$label
  mkdir -p "$state"
  states+=("$state")
  sum=$work/$label.summary rep=$work/$label.fifos
  local step rc=0
  step=$(date +%s%N)
  TOKEND_FAKE_HOOK_STATE=$state TOKEND_FAKE_HOOK_TOKENS=$tokens TOKEND_FAKE_HOOK_MODE=$mode \
    bash testdata/nix/sandbox-build.sh --nix-bin "$nb" --hook "$repo/testdata/nix/fake-hook.sh" \
    --tools "$tools" --work "$work/$label" --builds "$builds" --name "tokend-$label" "$@" \
    >"$sum" 2>"$work/$label.err" || rc=$?
  elapsed=$((($(date +%s%N) - step) / 1000000))
  bash testdata/nix/fake-hook.sh --report "$state" >"$rep"
  bash testdata/nix/fake-hook.sh --cleanup "$state"
  hook_calls=$(wc -l <"$state/calls.log" 2>/dev/null || echo 0)
  return $rc
}
# field KEY: that key's values across the BUILD lines, one per line
field() { sed -n "s/^BUILD .* $1=\([^ ]*\).*/\1/p" "$sum"; }
all_eq() { # KEY WANT: every build's KEY is WANT
  local v
  v=$(field "$1" | sort -u)
  [ "$v" = "$2" ] || { why="$1=$(echo "$v" | tr '\n' ' ')(want $2)"; return 1; }
}

if [ -n "$tools" ]; then
  for nb in ${nixes[@]+"${nixes[@]}"}; do
    ver=$(nix_version "$nb")
    v=nix${ver//./}

    for n in 2 4; do
      name="Nix $ver: N=$n tokens, one build"
      why=
      if sandbox "$nb" "$v-n$n" "$n" fifo 1; then
        if all_eq make_max $((n + 1)) && all_eq ninja_max $((n + 1)) && all_eq make_jobs 6 && all_eq ninja_jobs 6 \
          && all_eq make_auth "fifo:$fifo_path" && all_eq ninja_jobserver yes && all_eq fifo_present yes \
          && [ "$(grep -c "tokens=$n available=$n " "$rep")" = 1 ] || { why="${why:-tokens not all back: $(cat "$rep")}"; false; }; then
          pass "$name: make and ninja reach $((n + 1)) jobs, $n tokens back in the FIFO (${elapsed} ms)"
        else
          fail "$name" "$why; $(grep ^BUILD "$sum")"
        fi
      else
        fail "$name" "harness failed: $(tail -5 "$work/$v-n$n.err")"
      fi
    done

    name="Nix $ver: three builds at once, N=2 each"
    why=
    if sandbox "$nb" "$v-three" 2 fifo 3; then
      overlap=$(sed -n 's/^BUILDS_OVERLAP=//p' "$sum")
      if [ "$(grep -c '^BUILD ' "$sum")" = 3 ] && all_eq make_max 3 && all_eq ninja_max 3 && all_eq make_jobs 6 \
        && all_eq ninja_jobs 6 && all_eq make_auth "fifo:$fifo_path" \
        && { [ "$overlap" = 3 ] || { why="builds did not overlap (BUILDS_OVERLAP=$overlap)"; false; }; } \
        && { [ "$(grep -c 'tokens=2 available=2 ' "$rep")" = 3 ] || { why="tokens not all back: $(cat "$rep")"; false; }; }; then
        pass "$name: each reaches 3 jobs, 3 builds overlapped, all tokens back (${elapsed} ms)"
      else
        fail "$name" "$why; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-three.err")"
    fi

    name="Nix $ver: hook prints nothing"
    why=
    if sandbox "$nb" "$v-empty" 2 empty 1; then
      if [ "$hook_calls" = 1 ] && all_eq fifo_present no && all_eq make_max 6 && all_eq ninja_max 6 \
        && all_eq make_jobs 6 && all_eq ninja_jobs 6 && all_eq ninja_jobserver no \
        && ! grep -q "fifo:$fifo_path" "$sum"; then
        pass "$name: hook ran, build succeeded unbounded (make and ninja 6 of 6 jobs at once) (${elapsed} ms)"
      else
        fail "$name" "${why:-hook calls $hook_calls}; $(grep ^BUILD "$sum")"
      fi
    else
      fail "$name" "harness failed: $(tail -5 "$work/$v-empty.err")"
    fi

    name="Nix $ver: FIFO present, enableParallelBuilding off"
    why=
    if sandbox "$nb" "$v-serial" 2 fifo 1 --no-parallel --sleep 0.2; then
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
  done
fi

[ "$failed" = 0 ] || TOKEND_NIX_TEST_KEEP=1
summary
[ "$failed" = 0 ]
