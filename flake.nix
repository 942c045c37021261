{
  description = "tokend: a host-wide, memory-aware GNU make jobserver broker";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      overlay = import ./nix/overlay.nix;
      pkgsFor = system: import nixpkgs {
        inherit system;
        overlays = [ overlay ];
      };
    in
    {
      # tokend, tokenctl and tokend-nix-hook.
      packages = lib.genAttrs systems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.tokend;
          tokend = pkgs.tokend;
          jobserverHook = pkgs.tokendJobserverHook;
        }
      );

      # tokend, tokendJobserverHook and withJobserver.
      overlays.default = overlay;
      # Opt-in, on top of default: every stdenv build gets the jobserver
      # setup hook (stdenv changes, so everything rebuilds).
      overlays.jobserverEverywhere = final: prev: (overlay final prev).tokendJobserverEverywhere final prev;

      # services.tokend; it adds overlays.default to nixpkgs.overlays.
      nixosModules.default = ./nix/module.nix;
    };
}
