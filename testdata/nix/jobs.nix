# Test derivations for testdata/nix/sandbox-build.sh: plain derivations, no
# nixpkgs. The builder (builder.sh, run by the host's bash mounted at /bin/bash)
# sources the jobserver setup hook the way stdenv would, then runs a parallel
# make build and a ninja build of `jobs` jobs each. Every job appends
# "S <µs> <id>" and "E <µs> <id>" to $out/make.log or $out/ninja.log.
#
# The sandbox must provide (through sandbox-paths): /bin/sh and /bin/busybox
# (busybox), /bin/bash, /tools/make (GNU make >= 4.4), /tools/ninja
# (ninja >= 1.13) and the libraries they need.
{
  # Anything unique per run, so Nix really builds again.
  nonce,
  # Derivation names are "<name>-<i>", i = 1..builds.
  name ? "tokend-jobserver-test",
  builds ? 1,
  jobs ? 6,
  # Seconds each job sleeps (a string: busybox sleep takes fractions).
  sleep ? "0.5",
  # A command each job runs instead of sleeping ("" to sleep), such as a
  # stand-in compiler mapped into the sandbox.
  job ? "",
  # stdenv's enableParallelBuilding.
  parallel ? true,
  setupHook ? ../../nix/setup-hook.sh,
  # requiredSystemFeatures, space-separated ("" for none); the hook hands
  # them to tokend.
  features ? "",
  # Seconds each build's builder sleeps before it starts (strings, one per
  # build; [ ] for none), so builds reach the setup hook at staggered times.
  delays ? [ ],
  system ? builtins.currentSystem,
}:

let
  one =
    i:
    derivation (
      {
        name = "${name}-${toString i}";
        pname = name;
        version = toString i;
        inherit
          system
          nonce
          jobs
          sleep
          job
          setupHook
          ;
        delay = if delays == [ ] then "0" else builtins.elemAt delays (i - 1);
        builder = "/bin/bash";
        args = [ ./builder.sh ];
        enableParallelBuilding = parallel;
      }
      // (if features == "" then { } else { requiredSystemFeatures = features; })
    );
in
builtins.genList (i: one (i + 1)) builds
