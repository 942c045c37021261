# nixpkgs overlay for tokend.
#
#   tokend                  the daemon, tokenctl and tokend-nix-hook
#   tokendJobserverHook     setup hook: builds join tokend's jobserver FIFO
#                           (see ./setup-hook.sh) when the pre-build-hook
#                           mapped one into the sandbox
#   withJobserver pkg       pkg with the setup hook added to its
#                           nativeBuildInputs: only pkg's hash changes
#   tokendJobserverEverywhere
#                           an overlay to apply on top (opt-in): every
#                           stdenv derivation gets the setup hook. It changes
#                           stdenv, so the whole package set rebuilds.
#
# Usage: nixpkgs.overlays = [ tokend.overlays.default ];
#        environment.systemPackages = [ (pkgs.withJobserver pkgs.llvm) ];
#        nixpkgs.overlays = [ tokend.overlays.default tokend.overlays.jobserverEverywhere ];
final: prev:
let
  lib = final.lib;
  hookFile = ./setup-hook.sh;
  version = "0.1.0-dev";
  # go.mod asks for Go 1.26.
  buildGoModule =
    if lib.versionAtLeast final.go.version "1.26" then
      final.buildGoModule
    else
      final.buildGo126Module;
in
{
  tokend = buildGoModule {
    pname = "tokend";
    inherit version;
    src = lib.cleanSourceWith {
      src = lib.cleanSource ../.;
      filter =
        path: type:
        let
          rel = lib.removePrefix (toString ../. + "/") (toString path);
        in
        !(lib.hasPrefix "bench-out" rel || rel == "result" || lib.hasPrefix "result-" rel);
    };
    # The NAR hash of `go mod vendor` for go.mod/go.sum. .ci/nix-test.sh
    # recomputes it and fails when it is stale (TOKEND_UPDATE_VENDOR_HASH=1
    # rewrites it).
    vendorHash = "sha256-yDfSHTFG4VSZmcaa06sdrs1LhlnRJRr/uP0fuNbFU7A=";
    subPackages = [ "cmd/..." ];
    env.CGO_ENABLED = "0";
    # The version every program's --version says.
    ldflags = [
      "-s"
      "-w"
      "-X github.com/tokend/tokend/internal/version.Version=${version}"
    ];
    # The test suite drives real make, ninja and Nix builds as root; it runs
    # in CI (.ci/test), not in the Nix sandbox.
    doCheck = false;
    meta = {
      description = "Host-wide, memory-aware GNU make jobserver broker";
      mainProgram = "tokend";
      platforms = lib.platforms.linux;
    };
  };

  tokendJobserverHook = final.makeSetupHook { name = "tokend-jobserver-hook"; } hookFile;

  withJobserver =
    pkg:
    pkg.overrideAttrs (old: {
      nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ final.tokendJobserverHook ];
    });

  # A plain file in a stdenv's default inputs is sourced as a setup hook, so
  # this needs no derivation built with the stdenv it changes.
  tokendJobserverEverywhere = _final: prev': {
    stdenv = prev'.stdenv.override (old: {
      extraNativeBuildInputs = (old.extraNativeBuildInputs or [ ]) ++ [ hookFile ];
      # The hook joins stdenv's closure, which the bootstrap's
      # allowedRequisites list does not know (overrideCC lifts it too).
      allowedRequisites = null;
    });
  };
}
