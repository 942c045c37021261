#!/usr/bin/env bash
# Installs what the Nix side's tests need, idempotently, on Debian 12 as root:
#  * Debian 12's Nix 2.8 (nix-bin), busybox-static and patchelf, from apt;
#  * the nixbld group and build users nixbld1..nixbld8 if they are missing;
#  * Debian sid's Nix (2.34.x when this was written) in a private folder:
#    its .debs and those of the libraries it needs (sid's glibc included) are
#    fetched with a private APT configuration, unpacked with dpkg -x and the
#    binaries patched with patchelf to use that folder's ld.so and libraries.
#    Nothing from sid is installed on the host.
# Prints KEY=VALUE lines on stdout:
#   NIX28_BIN=/usr/bin          NIX28_VERSION=2.8.0
#   NIX234_BIN=<dir or empty>   NIX234_VERSION=<version or empty>
#   BUSYBOX=/usr/bin/busybox
# NIX234_BIN is empty (and stderr says why) if sid's Nix could not be made to run.
set -euo pipefail

cache=${TOKEND_TOOLS:-$HOME/.cache/tokend-tools}
log() { echo "nix.sh: $*" >&2; }
t0=$(date +%s)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

need=()
for p in nix-bin busybox-static patchelf; do
  installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  # Update the package lists only if apt does not know the packages yet.
  if ! apt-cache show "${need[@]}" >/dev/null 2>&1; then
    log "apt-get update"
    apt-get update -qq >&2
  fi
  log "installing ${need[*]}"
  apt_log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$apt_log" 2>&1; then
    log "apt-get install failed; apt-get update and retry"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$apt_log" 2>&1 ||
      { cat "$apt_log" >&2; rm -f "$apt_log"; exit 1; }
  fi
  rm -f "$apt_log"
fi

# Build users: Nix wants them listed as members of the build-users-group.
getent group nixbld >/dev/null || groupadd --system nixbld
for i in $(seq 1 8); do
  u=nixbld$i
  if ! id "$u" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin \
      --gid nixbld --groups nixbld --comment "Nix build user $i" "$u"
  fi
  getent group nixbld | cut -d: -f4 | tr ',' '\n' | grep -qx "$u" || usermod -a -G nixbld "$u"
done

nix28_version=$(/usr/bin/nix-build --version | sed -n 's/.* \([0-9][0-9.]*\)$/\1/p')

# --- sid's Nix in a private prefix ------------------------------------------
sid=$cache/nix-sid
prefix=$sid/root
nix234_bin=
nix234_version=

sid_nix_version() { # prints the version if $prefix's nix runs
  [ -x "$prefix/usr/bin/nix-build" ] || return 1
  "$prefix/usr/bin/nix-build" --version 2>/dev/null | sed -n 's/^nix-build (Nix) \([0-9][0-9.]*\)$/\1/p' | grep .
}

fetch_sid_nix() {
  mkdir -p "$sid/lists/partial" "$sid/cache/archives/partial"
  printf 'deb [arch=amd64] http://deb.debian.org/debian sid main\n' >"$sid/sid.list"
  : >"$sid/status"
  cat >"$sid/apt.conf" <<CONF
Dir::Etc::SourceList "$sid/sid.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$sid/lists";
Dir::State::status "$sid/status";
Dir::Cache "$sid/cache";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
CONF
  export APT_CONFIG=$sid/apt.conf
  apt-get update -qq >&2 || { log "sid: apt-get update failed"; return 1; }
  # nix-bin and every library package in its dependency closure (sid's glibc
  # included); the perl, PAM and debconf parts are for tools Nix does not need.
  local pkgs
  pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances nix-bin |
    grep -E '^(nix-bin|lib[^ ]*|zlib1g)$' |
    grep -vE 'perl|^libpam|^libdebian-installer|^libdebconfclient|^libnewt|^libslang|^libtextwrap|^libsemanage|^libaudit|^libgdbm|^libdb5' |
    sort -u)
  [ -n "$pkgs" ] || { log "sid: cannot resolve nix-bin's dependencies"; return 1; }
  rm -rf "$sid/debs" "$prefix.new"
  mkdir -p "$sid/debs" "$prefix.new"
  # shellcheck disable=SC2086
  (cd "$sid/debs" && apt-get download -qq $pkgs >&2)
  local d
  for d in "$sid"/debs/*.deb; do dpkg -x "$d" "$prefix.new"; done
  local libdir=$prefix/usr/lib/x86_64-linux-gnu
  local ld=$libdir/ld-linux-x86-64.so.2
  [ -e "$prefix.new/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || { log "sid: no ld.so in libc6"; return 1; }
  rm -rf "$prefix"
  mv "$prefix.new" "$prefix"
  local f
  for f in "$prefix/usr/bin/nix" "$prefix"/usr/libexec/nix-*; do
    if [ ! -f "$f" ] || [ -L "$f" ]; then continue; fi
    patchelf --set-interpreter "$ld" --force-rpath --set-rpath "$libdir" "$f"
  done
  # Every library must come from the prefix: a mix with Debian 12's glibc
  # does not run.
  local missing
  missing=$("$ld" --library-path "$libdir" --list "$prefix/usr/bin/nix" | grep -v -e "$libdir" -e linux-vdso || true)
  if [ -n "$missing" ]; then
    log "sid: libraries not from the prefix: $missing"
    return 1
  fi
}

if ! nix234_version=$(sid_nix_version); then
  log "fetching Debian sid's Nix into $prefix"
  # A subshell outside any condition, so that set -e holds inside it.
  set +e
  (
    set -e
    fetch_sid_nix
  )
  rc=$?
  set -e
  if [ "$rc" != 0 ] || ! nix234_version=$(sid_nix_version); then
    nix234_version=
    log "WARNING: sid's Nix could not be made to run; NIX234_BIN is empty, only Nix $nix28_version is usable"
  fi
fi
if [ -n "$nix234_version" ]; then
  nix234_bin=$prefix/usr/bin
  case "$nix234_version" in
    2.34.*) ;;
    *) log "note: sid now has Nix $nix234_version (expected 2.34.x); using it" ;;
  esac
fi

log "Nix $nix28_version at /usr/bin; sid Nix ${nix234_version:-none} at ${nix234_bin:-none} ($(($(date +%s) - t0)) s)"
echo "NIX28_BIN=/usr/bin"
echo "NIX28_VERSION=$nix28_version"
echo "NIX234_BIN=$nix234_bin"
echo "NIX234_VERSION=$nix234_version"
echo "BUSYBOX=$(readlink -f "$(command -v busybox)")"
