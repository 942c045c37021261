#!/usr/bin/env bash
# Installs the real jobserver clients the test suite drives, idempotently:
# GNU make 4.4.x and ninja 1.13.x built from Debian sid source packages into
# a cache directory (Debian 12 ships make 4.3 and a ninja with no jobserver
# client), plus Debian 12's own make 4.3, gcc and busybox, the terminal and
# shells tokenctl's terminal tests drive (tmux, bash-completion, zsh, fish),
# and jq for the README's notifier.
# Prints the cache directory's bin/ on the last line of stdout.
set -euo pipefail

cache=${TOKEND_TOOLS:-$HOME/.cache/tokend-tools}
bin=$cache/bin
mkdir -p "$bin"
log() { echo "tools: $*" >&2; }

have_version() { # $1 binary, $2 version prefix
  [ -x "$1" ] && "$1" --version 2>/dev/null | head -1 | grep -q -- "$2"
}

apt_ready=
apt_update() {
  [ -n "$apt_ready" ] && return
  apt-get update -qq >&2
  apt_ready=1
}

need_pkgs=()
for p in make gcc python3 dpkg-dev busybox-static tmux zsh fish bash-completion jq; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

# Sid's source packages, fetched with a private apt configuration so that
# nothing from sid is ever installed on the host.
sid=$cache/sid
sid_source() { # $1 source package; leaves it unpacked under $sid/src
  mkdir -p "$sid/lists/partial" "$sid/cache/archives/partial" "$sid/src"
  printf 'deb-src http://deb.debian.org/debian sid main\n' >"$sid/sid.list"
  cat >"$sid/apt.conf" <<CONF
Dir::Etc::SourceList "$sid/sid.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$sid/lists";
Dir::Cache "$sid/cache";
CONF
  if [ ! -f "$sid/updated" ]; then
    APT_CONFIG=$sid/apt.conf apt-get update -qq >&2
    touch "$sid/updated"
  fi
  (cd "$sid/src" && APT_CONFIG=$sid/apt.conf apt-get source -qq --download-only "$1" >&2 \
    && for d in "$1"_*.dsc; do dpkg-source -x --skip-debianization "$d" >/dev/null 2>&1 || true; done)
}

if ! have_version "$bin/make" 'GNU Make 4.4'; then
  log "building GNU make 4.4 from sid sources"
  sid_source make-dfsg
  src=$(ls -d "$sid"/src/make-dfsg-*/ | tail -1)
  (cd "$src" \
    && sed -i 's# doc/Makefile##' configure \
    && sed -i 's/^SUBDIRS = lib po doc$/SUBDIRS = lib po/' Makefile.in \
    && ./configure -q --without-guile --disable-nls LDFLAGS=-static >&2 \
    && ./build.sh >&2)
  cp "$src/make" "$bin/make"
  have_version "$bin/make" 'GNU Make 4.4' || { log "built make is not 4.4: $("$bin/make" --version | head -1)"; exit 1; }
fi

if ! have_version "$bin/ninja" '^1\.1[3-9]'; then
  log "building ninja 1.13 from sid sources"
  sid_source ninja-build
  src=$(ls -d "$sid"/src/ninja-build-*/ | tail -1)
  (cd "$src" && python3 configure.py --bootstrap >&2)
  cp "$src/ninja" "$bin/ninja"
  have_version "$bin/ninja" '^1\.1[3-9]' || { log "built ninja is not 1.13+: $("$bin/ninja" --version)"; exit 1; }
fi

ln -sf /usr/bin/make "$bin/make-4.3"
log "make: $("$bin/make" --version | head -1); ninja: $("$bin/ninja" --version); make-4.3: $(/usr/bin/make --version | head -1)"
echo "$bin"
