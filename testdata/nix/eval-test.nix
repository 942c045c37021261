# Evaluates nix/overlay.nix and nix/module.nix against small stubs of nixpkgs'
# lib and packages (there is no nixpkgs offline here): it catches wrong
# attribute names and wrong logic in what the overlay returns and what the
# module sets, not what only a real NixOS evaluation would (option types of
# other modules, systemd's own checks).
#   nix-instantiate --eval --strict testdata/nix/eval-test.nix
# prints "<n> checks passed" or fails naming the checks that did not hold.
let
  overlay = import ../../nix/overlay.nix;
  module = import ../../nix/module.nix;

  lib = rec {
    versionAtLeast = v: w: builtins.compareVersions v w >= 0;
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    removePrefix =
      p: s: if hasPrefix p s then builtins.substring (builtins.stringLength p) (-1) s else s;
    cleanSource = src: src;
    cleanSourceWith = { src, filter }: { inherit src filter; };
    platforms.linux = [ "x86_64-linux" ];
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    # The module system, reduced to what the module uses.
    mkOption = o: o // { _type = "option"; };
    mkEnableOption = d: mkOption {
      default = false;
      description = d;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    # Priorities are not modelled: a default is the value.
    mkDefault = v: v;
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    types = {
      str = "str";
      bool = "bool";
      package = "package";
      nullOr = t: "nullOr ${t}";
      enum = vs: "enum";
      ints.between = lo: hi: "int";
      submodule = m: {
        _type = "submodule";
        inherit (m) options;
      };
    };
  };

  # Resolves mkIf and mkMerge in a module's config; absent is dropped.
  absent = {
    _type = "absent";
  };
  isAbsent = v: builtins.isAttrs v && (v._type or "") == "absent";
  merge =
    a: b:
    if isAbsent a then
      b
    else if isAbsent b then
      a
    else if builtins.isAttrs a && builtins.isAttrs b then
      builtins.foldl' (
        acc: k: acc // { ${k} = if acc ? ${k} then merge acc.${k} b.${k} else b.${k}; }
      ) a (builtins.attrNames b)
    else if builtins.isList a && builtins.isList b then
      a ++ b
    else
      throw "conflicting definitions: ${builtins.toJSON a} and ${builtins.toJSON b}";
  resolve =
    v:
    if builtins.isAttrs v && (v._type or "") == "if" then
      (if v.condition then resolve v.content else absent)
    else if builtins.isAttrs v && (v._type or "") == "merge" then
      builtins.foldl' merge absent (map resolve v.contents)
    else if builtins.isAttrs v && !(v ? _type) && !(v ? outPath) then
      let
        r = builtins.mapAttrs (_: resolve) v;
      in
      builtins.removeAttrs r (builtins.filter (k: isAbsent r.${k}) (builtins.attrNames r))
    else
      v;

  fakePkg = {
    outPath = "/nix/store/00000000000000000000000000000000-tokend";
    name = "tokend";
  };
  pkgs = {
    tokend = fakePkg;
    coreutils = "/nix/store/11111111111111111111111111111111-coreutils";
    formats.toml = _: {
      type = "toml value";
      generate = name: value: {
        generated = name;
        inherit value;
      };
    };
  };

  # Evaluates the module with `user` as services.tokend's definitions and the
  # option defaults for the rest, as the module system would.
  evalModule =
    {
      user,
      nixVersion ? "2.34.8",
      nixPname ? "nix",
    }:
    let
      opts = (module {
        inherit config lib pkgs;
      }).options.services.tokend;
      defaults = builtins.mapAttrs (_: o: o.default) opts;
      settingsDefaults = builtins.mapAttrs (_: o: o.default) opts.settings.type.options;
      cfg =
        defaults
        // user
        // {
          settings = settingsDefaults // (user.settings or { });
        };
      config = {
        services.tokend = cfg;
        nix.package = {
          version = nixVersion;
          pname = nixPname;
        };
        environment.etc."tokend/config.toml".source = (resolve (module {
          inherit config lib pkgs;
        }).config).environment.etc."tokend/config.toml".source;
      };
      r = resolve
        (module {
          inherit config lib pkgs;
        }).config;
    in
    if isAbsent r then { } else r;

  full = evalModule {
    user = {
      enable = true;
      group = "jobserver";
      useCgroups = true;
    };
  };
  svc = full.systemd.services.tokend;
  sc = svc.serviceConfig;
  plain = evalModule { user.enable = true; };
  oldNix = evalModule {
    user = {
      enable = true;
      useCgroups = true;
    };
    nixVersion = "2.8.0";
  };
  lix = evalModule {
    user.enable = true;
    nixPname = "lix";
  };
  noHook = evalModule {
    user = {
      enable = true;
      nixPreBuildHook = false;
    };
  };
  off = evalModule { user.enable = false; };
  metrics = evalModule {
    user = {
      enable = true;
      settings.metrics_listen = "0.0.0.0:9464";
      openFirewall = true;
    };
  };
  metricsClosed = evalModule {
    user = {
      enable = true;
      settings.metrics_listen = "127.0.0.1:9464";
    };
  };
  elsewhere = evalModule {
    user = {
      enable = true;
      settings.runtime_dir = "/var/run/jobs";
    };
  };

  # The overlay, applied to a stub package set.
  prevFor = goVersion: {
    inherit lib;
    go.version = goVersion;
    buildGoModule = args: { builtWith = "buildGoModule"; } // args;
    buildGo126Module = args: { builtWith = "buildGo126Module"; } // args;
    makeSetupHook = { name }: script: { inherit name script; };
    stdenv.override = f: f {
      extraNativeBuildInputs = [ "patchelf-hook" ];
      allowedRequisites = [ "bootstrap" ];
    };
  };
  apply =
    prev:
    let
      final = prev // overlay final prev;
    in
    final;
  final = apply (prevFor "1.26.2");
  finalOldGo = apply (prevFor "1.25.7");
  hook = final.tokendJobserverHook;
  withCmake = final.withJobserver { overrideAttrs = f: f { nativeBuildInputs = [ "cmake" ]; }; };
  withNothing = final.withJobserver { overrideAttrs = f: f { }; };
  everywhere = (final.tokendJobserverEverywhere final (prevFor "1.26.2")).stdenv;
  filter = final.tokend.src.filter;
  root = toString ../..;

  checks = {
    "module: Type=notify" = sc.Type == "notify";
    "module: Restart=on-failure" = sc.Restart == "on-failure";
    "module: RuntimeDirectory=tokend" = sc.RuntimeDirectory == "tokend";
    "module: tokend may read the kernel's OOM kill reports" =
      sc.ProtectKernelLogs == false
      && builtins.elem "/dev/kmsg" sc.BindReadOnlyPaths
      && builtins.elem "/dev/kmsg r" sc.DeviceAllow
      && builtins.elem "CAP_SYSLOG" sc.CapabilityBoundingSet;
    "module: StateDirectory=tokend holds the job history" =
      sc.StateDirectory == "tokend"
      && full.environment.etc."tokend/config.toml".source.value.state_dir == "/var/lib/tokend";
    "module: tokend may collect returned tokens at real-time priority 1, no higher" =
      sc.RestrictRealtime == false && sc.LimitRTPRIO == 1;
    "module: cgroup tree writable" =
      sc.ProtectControlGroups == false && builtins.elem "/sys/fs/cgroup" sc.ReadWritePaths;
    "module: ExecStart reads /etc/tokend/config.toml" =
      sc.ExecStart == "${fakePkg}/bin/tokend --config /etc/tokend/config.toml";
    "module: wanted by multi-user.target" = svc.wantedBy == [ "multi-user.target" ];
    "module: pre-build-hook is tokend-nix-hook" =
      full.nix.settings.pre-build-hook == "${fakePkg}/bin/tokend-nix-hook";
    "module: nixPreBuildHook = false leaves nix.settings alone" =
      !(noHook ? nix) && !(noHook.systemd.services ? nix-daemon);
    "module: the hook finds tokend's socket" =
      full.systemd.services.nix-daemon.environment.TOKEND_SOCKET == "/run/tokend/tokend.sock"
      && elsewhere.systemd.services.nix-daemon.environment.TOKEND_SOCKET == "/var/run/jobs/tokend.sock";
    "module: useCgroups" =
      full.nix.settings.use-cgroups == true
      && full.nix.settings.experimental-features == [ "cgroups" ];
    "module: no cgroups by default" = !(plain.nix.settings ? use-cgroups);
    "module: overlay added" =
      builtins.length full.nixpkgs.overlays == 1 && builtins.isFunction (builtins.head full.nixpkgs.overlays);
    "module: group created and used as lease_group" =
      full.users.groups ? jobserver
      && full.environment.etc."tokend/config.toml".source.value.lease_group == "jobserver"
      && sc.Group == "jobserver"
      && sc.RuntimeDirectoryMode == "0750";
    "module: no group by default" =
      (plain.users.groups or { }) == { }
      && !(plain.systemd.services.tokend.serviceConfig ? Group)
      && plain.environment.etc."tokend/config.toml".source.value.lease_group == "";
    "module: TOML settings with defaults" =
      full.environment.etc."tokend/config.toml".source.value == {
        runtime_dir = "/run/tokend";
        state_dir = "/var/lib/tokend";
        tokens = 0;
        lease_group = "jobserver";
        lease_cgroups = "/sys/fs/cgroup/system.slice/tokend.service/leases";
        log_level = "info";
        metrics_listen = "";
      };
    "module: no network and no open port by default" =
      sc.PrivateNetwork && sc.RestrictAddressFamilies == [ "AF_UNIX" ] && !(full ? networking);
    "module: metrics_listen lets tokend reach the network, and openFirewall opens its port" =
      !metrics.systemd.services.tokend.serviceConfig.PrivateNetwork
      && builtins.elem "AF_INET" metrics.systemd.services.tokend.serviceConfig.RestrictAddressFamilies
      && metrics.networking.firewall.allowedTCPPorts == [ 9464 ]
      && metrics.environment.etc."tokend/config.toml".source.value.metrics_listen == "0.0.0.0:9464";
    "module: metrics_listen alone opens no port" =
      !metricsClosed.systemd.services.tokend.serviceConfig.PrivateNetwork && !(metricsClosed ? networking);
    "module: the service delegates its cgroup subtree to tokend" =
      full.systemd.services.tokend.serviceConfig.Delegate;
    "module: tokend is the OOM killer's last choice" = sc.OOMScoreAdjust == -900;
    "module: stopping tokend leaves the builds and the FIFO holder running" = sc.KillMode == "process";
    "module: an OOM-killed build job does not stop nix-daemon" =
      full.systemd.services.nix-daemon.serviceConfig.OOMPolicy == "continue";
    "module: assertions hold on Nix 2.34" = builtins.all (a: a.assertion) full.assertions;
    "module: useCgroups asserts Nix >= 2.12" = !(builtins.all (a: a.assertion) oldNix.assertions);
    "module: warns on Lix" = builtins.length lix.warnings == 1 && plain.warnings == [ ];
    "module: disabled sets nothing" = off == { };
    "overlay: tokend with buildGoModule on Go >= 1.26" = final.tokend.builtWith == "buildGoModule";
    "overlay: tokend with buildGo126Module on older Go" =
      finalOldGo.tokend.builtWith == "buildGo126Module";
    "overlay: vendorHash is an SRI hash or null" =
      final.tokend.vendorHash == null || lib.hasPrefix "sha256-" final.tokend.vendorHash;
    "overlay: builds the commands" = final.tokend.subPackages == [ "cmd/..." ];
    "overlay: source filter" =
      filter "${root}/cmd" "directory" && !(filter "${root}/bench-out" "directory");
    "overlay: setup hook" =
      hook.name == "tokend-jobserver-hook" && baseNameOf (toString hook.script) == "setup-hook.sh";
    "overlay: withJobserver appends the hook" = withCmake.nativeBuildInputs == [
      "cmake"
      hook
    ];
    "overlay: withJobserver without nativeBuildInputs" = withNothing.nativeBuildInputs == [ hook ];
    "overlay: jobserverEverywhere adds the hook file to stdenv" =
      builtins.length everywhere.extraNativeBuildInputs == 2
      && builtins.head everywhere.extraNativeBuildInputs == "patchelf-hook"
      && baseNameOf (toString (builtins.elemAt everywhere.extraNativeBuildInputs 1)) == "setup-hook.sh"
      && everywhere.allowedRequisites == null;
  };
  failures = builtins.filter (n: !checks.${n}) (builtins.attrNames checks);
in
if failures == [ ] then
  "${toString (builtins.length (builtins.attrNames checks))} checks passed"
else
  throw "failed: ${builtins.concatStringsSep "; " failures}"
