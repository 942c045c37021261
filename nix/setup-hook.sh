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
#  * Before the first parallel tool runs, the build waits until tokend admits
#    it. A nix build is already running when tokend hears of it, so only the
#    build can wait for its first job's slot; the pre-build-hook maps a gate
#    file at /run/tokend/admission next to the FIFO. Reading it asks tokend
#    for the slot; tokend rewrites it every tick ("wait <ms> <adj>") until
#    the build may start ("go <ms> <adj>"). A stamp that stops moving for
#    1.5 s means tokend is gone: the build goes on without the jobserver, as
#    it would without tokend. Once admitted, the build raises its
#    oom_score_adj to <adj>, so a kernel OOM kill takes a build job first.
#    No gate (an older tokend, or tests): no waiting.
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
# tokendJobserverFifo and tokendJobserverGate may be preset to other paths
# (tests do).

tokendJobserverFifo=${tokendJobserverFifo:-/run/tokend/jobserver.fifo}
tokendJobserverGate=${tokendJobserverGate:-/run/tokend/admission}

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

# Waits until tokend admits the build (see above). Fails if tokend is gone:
# the caller then runs its tool as it would without tokend. Without
# EPOCHREALTIME (bash < 5) it cannot tell a live tokend from a dead one, so
# it does not wait.
tokendJobserverAwait() {
    if [ -n "${_tokendJobserverAdmitted-}" ] || [ ! -f "$tokendJobserverGate" ] || [ -z "${EPOCHREALTIME-}" ]; then
        return 0
    fi
    local state stamp adj now start lastStamp="" moved="" said="" polls=0
    start=${EPOCHREALTIME/[.,]/}
    start=$((start / 1000))
    moved=$start
    while :; do
        state="" stamp="" adj=""
        { read -r state stamp adj <"$tokendJobserverGate"; } 2>/dev/null || true
        now=${EPOCHREALTIME/[.,]/}
        now=$((now / 1000))
        case "$stamp" in
            "" | *[!0-9]*) stamp="" ;;
        esac
        if [ "$state" = go ]; then
            _tokendJobserverAdmitted=1
            case "$adj" in
                "" | *[!0-9-]* | ?*-*) ;;
                *) tokendJobserverOomScoreAdj "$adj" ;;
            esac
            if [ -n "$said" ]; then
                echo "tokend: admitted after $((now - start)) ms" >&2
            fi
            return 0
        fi
        if [ -n "$stamp" ] && [ "$stamp" != "$lastStamp" ]; then
            if [ -z "$lastStamp" ] && [ $((now - stamp)) -gt 1500 ]; then
                # Already old at the first look: tokend died before the
                # build asked.
                moved=0
            else
                moved=$now
            fi
            lastStamp=$stamp
        fi
        if [ $((now - moved)) -gt 1500 ]; then
            echo "tokend: its gate has not moved for 1.5 s (tokend stopped?); running without its jobserver" >&2
            return 1
        fi
        # The first read asks, and with room tokend answers within a
        # millisecond: look again soon, then every 100 ms.
        polls=$((polls + 1))
        if [ "$polls" = 1 ]; then
            sleep 0.02
            continue
        fi
        if [ -z "$said" ]; then
            echo "tokend: waiting for a job slot (tokenctl status shows the budget)" >&2
            said=1
        fi
        sleep 0.1
    done
}

# Raises this shell's oom_score_adj to $1, never lowers it; what the build
# starts from now on inherits it.
tokendJobserverOomScoreAdj() {
    local cur=""
    { read -r cur </proc/self/oom_score_adj; } 2>/dev/null || return 0
    if [ -n "$cur" ] && [ "$1" -gt "$cur" ]; then
        { echo "$1" >/proc/self/oom_score_adj; } 2>/dev/null || true
    fi
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
    if [ -z "${enableParallelBuilding-}" ] || ! tokendJobserverUsable || ! tokendJobserverHold || ! tokendJobserverAwait; then
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
    if ! tokendJobserverUsable || ! tokendJobserverHold || ! tokendJobserverAwait; then
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
