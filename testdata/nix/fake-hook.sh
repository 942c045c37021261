#!/usr/bin/env bash
# TEST FIXTURE, not the product: a stand-in for cmd/tokend-nix-hook that needs
# no tokend, so the sandbox side (Nix, the setup hook, make, ninja) is tested
# alone, with exact token counts. Nix runs it as `pre-build-hook` with $1 = the
# .drv path and $2 = the sandbox root (its group is the build's gid).
#
# Per build it creates a FIFO (mode 0660, group = gid of $2) under
# $TOKEND_FAKE_HOOK_STATE/<drv name>/, fills it with $TOKEND_FAKE_HOOK_TOKENS
# tokens, leaves a background `sleep` holding it open O_RDWR (so make 4.4 never
# blocks in open() and the tokens outlive every client) and prints
#
#   extra-sandbox-paths
#   /run/tokend/jobserver.fifo=<that FIFO>
#   <blank line>
#
# Environment (Nix passes its own environment to the hook when nix-build runs
# the build itself, as the harness does; a nix-daemon would not):
#   TOKEND_FAKE_HOOK_STATE   directory for FIFOs and bookkeeping (required)
#   TOKEND_FAKE_HOOK_TOKENS  tokens per FIFO (default 2)
#   TOKEND_FAKE_HOOK_HOLD    seconds the holder lives at most (default 600)
#
# Other modes, for the test driver:
#   fake-hook.sh --report DIR   one line per FIFO:
#                               FIFO name=<drv name> tokens=<granted> available=<FIONREAD> gid=<gid> holder=alive|dead
#   fake-hook.sh --cleanup DIR  kills the holders started for DIR, removes the FIFOs
set -euo pipefail

# The one fixed in-sandbox path of the jobserver FIFO (nix/setup-hook.sh uses it).
sandbox_fifo=/run/tokend/jobserver.fifo

fionread() { # $1 FIFO: bytes waiting in it, without consuming them
  perl -e 'use Fcntl; sysopen(my $f, $ARGV[0], O_RDWR|O_NONBLOCK) or die "open $ARGV[0]: $!\n";
    my $n = pack("i", 0); ioctl($f, 0x541B, $n) or die "FIONREAD: $!\n"; print unpack("i", $n), "\n";' "$1"
}

holder_alive() { # $1 pid file
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -qa sleep "/proc/$pid/cmdline" 2>/dev/null
}

case "${1:-}" in
  --report)
    dir=${2:?--report DIR}
    for d in "$dir"/*/; do
      [ -p "$d/fifo" ] || continue
      alive=dead; holder_alive "$d/holder.pid" && alive=alive
      printf 'FIFO name=%s tokens=%s available=%s gid=%s holder=%s\n' \
        "$(basename "$d")" "$(cat "$d/tokens")" "$(fionread "$d/fifo")" "$(cat "$d/gid")" "$alive"
    done
    exit 0
    ;;
  --cleanup)
    dir=${2:?--cleanup DIR}
    for d in "$dir"/*/; do
      [ -f "$d/holder.pid" ] || continue
      if holder_alive "$d/holder.pid"; then kill "$(cat "$d/holder.pid")" 2>/dev/null || true; fi
      rm -f "$d/fifo" "$d/holder.pid"
    done
    exit 0
    ;;
esac

drv=${1:?usage: fake-hook.sh DRV SANDBOX_DIR}
sandbox=${2:?usage: fake-hook.sh DRV SANDBOX_DIR}
state=${TOKEND_FAKE_HOOK_STATE:?TOKEND_FAKE_HOOK_STATE is not set}
tokens=${TOKEND_FAKE_HOOK_TOKENS:-2}
hold=${TOKEND_FAKE_HOOK_HOLD:-600}

name=$(basename "$drv" .drv)
gid=$(stat -c %g "$sandbox")
d=$state/$name
mkdir -p "$d"
rm -f "$d/fifo"
mkfifo -m 0660 "$d/fifo"
chgrp "$gid" "$d/fifo"
exec 3<>"$d/fifo"
if [ "$tokens" -gt 0 ]; then
  head -c "$tokens" /dev/zero | tr '\0' '+' >&3
fi
# The holder inherits fd 3; its stdout must not be Nix's pipe, or Nix would
# wait for it.
# shellcheck disable=SC2217 # no fd of Nix's may stay open in it
sleep "$hold" >/dev/null 2>&1 </dev/null &
echo $! >"$d/holder.pid"
exec 3>&-
echo "$tokens" >"$d/tokens"
echo "$gid" >"$d/gid"
echo "$drv" >"$d/drv"

printf 'extra-sandbox-paths\n%s=%s\n\n' "$sandbox_fifo" "$d/fifo"
