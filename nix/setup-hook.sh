# shellcheck shell=bash
# tokend jobserver setup hook.
#
# tokend's pre-build-hook maps one GNU make jobserver FIFO per build into the
# sandbox at a fixed path, /run/tokend/jobserver.fifo. When that FIFO is there
# (a FIFO we can read and write) this hook lets make >= 4.4, ninja >= 1.13 and
# cargo draw job slots from it instead of each running its own
# -j$NIX_BUILD_CORES pool:
#
#  * From the build phase on, if the derivation builds in parallel
#    (enableParallelBuilding, which cmake and meson may only set during
#    configure), MAKEFLAGS and CARGO_MAKEFLAGS are exported with
#    --jobserver-auth=fifo:<path>. Flags already in MAKEFLAGS are kept; any -j
#    and any older jobserver auth in them are dropped.
#  * `make` and `ninja` become shell functions. stdenv's make phases add
#    -j$NIX_BUILD_CORES and the ninja hook adds -j$NIX_BUILD_CORES when they
#    build in parallel; an explicit -j makes both tools ignore a jobserver, so
#    the functions drop exactly that flag (and a matching -l$NIX_BUILD_CORES)
#    and run the tool with the jobserver. A call without that flag is a phase
#    stdenv runs serially (enableParallelChecking unset, ...): it runs with the
#    MAKEFLAGS and CARGO_MAKEFLAGS the build had before this hook, as stock
#    stdenv would. Any other -j (a package's -j1, say) is left alone.
#
#  * Once it joins, the build holds the FIFO open read-write until it ends.
#    make 4.4 opens the FIFO read-only with a blocking open(), which waits
#    for a writer. tokend is one, but if tokend dies, a make started after
#    it would wait forever; this descriptor is a writer that lives as long
#    as the build.
#
# Without the FIFO, or with dontUseTokendJobserver set, nothing is changed.
# When NIX_BUILD_CORES is 1 the -j1 of a parallel phase cannot be told from a
# serial one, so it is left alone too.
#
# tokendJobserverFifo may be preset to another path (tests do).

tokendJobserverFifo=${tokendJobserverFifo:-/run/tokend/jobserver.fifo}

tokendJobserverUsable() {
    [ -p "$tokendJobserverFifo" ] && [ -r "$tokendJobserverFifo" ] && [ -w "$tokendJobserverFifo" ]
}

# Opens the FIFO read-write on tokendJobserverFd, once; fails if it cannot.
# An open of a FIFO for reading and writing never blocks.
tokendJobserverHold() {
    if [ -n "${tokendJobserverFd-}" ]; then
        return 0
    fi
    # The braces keep the 2>/dev/null from being applied by exec for good.
    { exec {tokendJobserverFd}<>"$tokendJobserverFifo"; } 2>/dev/null
}

# Prints MAKEFLAGS value $1 with any -j and jobserver auth removed and, if $2
# is non-empty, --jobserver-auth=fifo:<path> added. Variable definitions after
# a "--" word are kept as they are.
tokendJobserverFlags() {
    local add="$2" padded=" $1 " head="$1" tail="" word skipNext="" out=""
    case "$padded" in
        *" -- "*)
            head="${padded%% -- *}"
            tail="-- ${padded#* -- }"
            tail="${tail% }"
            ;;
    esac
    local -a words=()
    read -r -a words <<< "$head"
    for word in ${words[@]+"${words[@]}"}; do
        if [ -n "$skipNext" ]; then
            skipNext=""
            case "$word" in
                *[!0-9]*) ;;
                *) continue ;;
            esac
        fi
        case "$word" in
            -j | --jobs) skipNext=1; continue ;;
            -j* | --jobs=* | --jobserver-auth=* | --jobserver-fds=* | --jobserver-style=*) continue ;;
        esac
        out="${out:+$out }$word"
    done
    if [ -n "$add" ]; then
        out="${out:+$out }--jobserver-auth=fifo:$tokendJobserverFifo"
    fi
    if [ -n "$tail" ]; then
        out="${out:+$out }$tail"
    fi
    printf '%s\n' "$out"
}

# preBuildHooks: export the jobserver for everything the build runs.
tokendJobserverExport() {
    if [ -z "${enableParallelBuilding-}" ] || ! tokendJobserverUsable || ! tokendJobserverHold; then
        return 0
    fi
    if [ -z "${_tokendJobserverSaved-}" ]; then
        _tokendJobserverSaved=1
        _tokendMakeflagsWasSet=${MAKEFLAGS+1}
        _tokendMakeflagsOld=${MAKEFLAGS-}
        _tokendCargoMakeflagsWasSet=${CARGO_MAKEFLAGS+1}
        _tokendCargoMakeflagsOld=${CARGO_MAKEFLAGS-}
    fi
    MAKEFLAGS=$(tokendJobserverFlags "${MAKEFLAGS-}" 1)
    CARGO_MAKEFLAGS=$MAKEFLAGS
    export MAKEFLAGS CARGO_MAKEFLAGS
    echo "tokend: joining jobserver fifo:$tokendJobserverFifo (MAKEFLAGS=$MAKEFLAGS)"
}

# Runs tool $1 with the rest as arguments, as described above.
tokendJobserverRun() {
    local tool="$1" cores="${NIX_BUILD_CORES-}" arg parallel="" prevJ=""
    shift
    local -a args=()
    if [ -n "$cores" ] && [ "$cores" != 1 ] && [ -z "${dontUseTokendJobserver-}" ]; then
        for arg in "$@"; do
            if [ -n "$prevJ" ]; then
                prevJ=""
                if [ "$arg" = "$cores" ]; then
                    parallel=1
                    continue
                fi
                args+=("-j")
            fi
            case "$arg" in
                "-j$cores" | "--jobs=$cores") parallel=1; continue ;;
                -j) prevJ=1; continue ;;
                "-l$cores" | "--load-average=$cores") continue ;;
            esac
            args+=("$arg")
        done
        if [ -n "$prevJ" ]; then
            args+=("-j")
        fi
    fi
    if [ -z "$parallel" ]; then
        # Not a parallel stdenv call: run it as given, with the flags the
        # build had before the jobserver was exported.
        # shellcheck disable=SC2030,SC2031 # on purpose, in a subshell
        (
            if [ -n "${_tokendJobserverSaved-}" ]; then
                if [ -n "$_tokendMakeflagsWasSet" ]; then
                    export MAKEFLAGS="$_tokendMakeflagsOld"
                else
                    unset MAKEFLAGS
                fi
                if [ -n "$_tokendCargoMakeflagsWasSet" ]; then
                    export CARGO_MAKEFLAGS="$_tokendCargoMakeflagsOld"
                else
                    unset CARGO_MAKEFLAGS
                fi
            fi
            exec "$tool" "$@"
        )
        return
    fi
    if ! tokendJobserverUsable || ! tokendJobserverHold; then
        command "$tool" "$@"
        return
    fi
    local flags
    # shellcheck disable=SC2031
    flags=$(tokendJobserverFlags "${MAKEFLAGS-}" 1)
    echo "tokend: $tool: dropped -j$cores, using the jobserver" >&2
    MAKEFLAGS="$flags" CARGO_MAKEFLAGS="$flags" command "$tool" ${args[@]+"${args[@]}"}
}

if [ -z "${dontUseTokendJobserver-}" ] && [ -z "${_tokendJobserverHookLoaded-}" ] && tokendJobserverUsable; then
    _tokendJobserverHookLoaded=1
    # Hold the FIFO from the start of the build, not only from the build
    # phase: a pipe's bytes are dropped when nothing holds it open, so if
    # tokend died during a long configure, the tokens it handed out would
    # be gone by the time make opened the FIFO.
    tokendJobserverHold || true
    preBuildHooks+=(tokendJobserverExport)

    make() {
        tokendJobserverRun make "$@"
    }

    ninja() {
        tokendJobserverRun ninja "$@"
    }
fi
