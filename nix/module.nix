# NixOS module: services.tokend, the host-wide jobserver broker, wired into
# Nix through its pre-build-hook.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.tokend;
  settingsFormat = pkgs.formats.toml { };
  configFile = "/etc/tokend/config.toml";
  metricsOn = cfg.settings.metrics_listen != "";
  # The port of HOST:PORT, for the firewall.
  metricsPort = builtins.fromJSON (builtins.head (builtins.match ".*:([0-9]+)" cfg.settings.metrics_listen));
  inherit (lib)
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    literalExpression
    types
    ;
in
{
  options.services.tokend = {
    enable = mkEnableOption "tokend, the host-wide GNU make jobserver broker";

    package = mkOption {
      type = types.package;
      default = pkgs.tokend;
      defaultText = literalExpression "pkgs.tokend";
      description = "The tokend package (tokend, tokenctl and tokend-nix-hook).";
    };

    settings = mkOption {
      description = ''
        tokend's configuration, written as TOML to ${configFile}.
        A change reloads the daemon (SIGHUP); runtime_dir and lease_group
        take effect at the next restart.
      '';
      default = { };
      example = {
        tokens = 16;
        log_level = "debug";
      };
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          runtime_dir = mkOption {
            type = types.str;
            default = "/run/tokend";
            description = "Directory for the socket, the state file and the FIFOs.";
          };
          state_dir = mkOption {
            type = types.str;
            # systemd makes it (StateDirectory) and keeps it across reboots.
            default = "/var/lib/tokend";
            description = "Directory for what outlives a reboot: the job history.";
          };
          tokens = mkOption {
            type = types.ints.between 0 65535;
            default = 0;
            description = "Fixed job budget; 0 lets tokend choose it.";
          };
          lease_group = mkOption {
            type = types.str;
            default = if cfg.group == null then "" else cfg.group;
            defaultText = literalExpression ''if group == null then "" else group'';
            description = "Group whose members may register leases (tokenctl run); empty: root only.";
          };
          lease_cgroups = mkOption {
            type = types.str;
            # systemd owns the cgroup tree but what it delegates (the
            # service has Delegate=yes), so the groups tokend makes for
            # tokenctl builds live inside its own unit. No controller is
            # enabled there, so tokend may stay in the unit's group beside
            # them: freezing and sampling need none.
            default = "/sys/fs/cgroup/system.slice/tokend.service/leases";
            description = "cgroup2 directory under which tokend makes a group per tokenctl build, so the brake can freeze it; \"off\" for none.";
          };
          log_level = mkOption {
            type = types.enum [
              "trace"
              "debug"
              "info"
              "warn"
              "error"
            ];
            default = "info";
            description = "Log level.";
          };
          metrics_listen = mkOption {
            type = types.str;
            default = "";
            example = "127.0.0.1:9464";
            description = ''
              TCP address (HOST:PORT) to serve Prometheus metrics on at
              /metrics, besides the control socket; empty: none. Setting it
              lets the service use the network; openFirewall opens
              its port.
            '';
          };
        };
      };
    };

    group = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "jobserver";
      description = ''
        If set, this group is created and its members may ask tokend for job
        tokens outside Nix (tokenctl run): it becomes settings.lease_group.
      '';
    };

    nixPreBuildHook = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Set nix.settings.pre-build-hook to tokend-nix-hook, which gives every
        sandboxed build its own jobserver FIFO at /run/tokend/jobserver.fifo.
        Builds join it only through the setup hook (pkgs.withJobserver, or
        the jobserverEverywhere overlay).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open settings.metrics_listen's port in the firewall, for a
        Prometheus on another host. Nothing is opened by default.
      '';
    };

    useCgroups = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run each Nix build in its own cgroup (experimental feature cgroups,
        use-cgroups = true; Nix >= 2.12), so tokend can see and limit each
        build's memory.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = !cfg.useCgroups || lib.versionAtLeast (config.nix.package.version or "0") "2.12";
          message = "services.tokend.useCgroups needs Nix >= 2.12 (use-cgroups).";
        }
      ];
      warnings = lib.optional (cfg.nixPreBuildHook && (config.nix.package.pname or "") == "lix") ''
        services.tokend: Lix >= 2.93 runs the pre-build-hook but ignores its
        extra-sandbox-paths, so builds will not see tokend's FIFO.
      '';

      nixpkgs.overlays = [ (import ./overlay.nix) ];

      environment.systemPackages = [ cfg.package ];
      environment.etc."tokend/config.toml".source = settingsFormat.generate "tokend.toml" cfg.settings;

      users.groups = mkIf (cfg.group != null) { ${cfg.group} = { }; };

      systemd.services.tokend = {
        description = "tokend jobserver broker";
        documentation = [ "https://github.com/tokend/tokend" ];
        wantedBy = [ "multi-user.target" ];
        # Nix builds ask it for FIFOs through the pre-build-hook.
        before = [ "nix-daemon.service" ];
        # tokend rereads its configuration on SIGHUP.
        reloadTriggers = [ config.environment.etc."tokend/config.toml".source ];
        serviceConfig = {
          Type = "notify";
          Delegate = true;
          ExecStart = "${cfg.package}/bin/tokend --config ${configFile}";
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = 1;
          # Only tokend itself is stopped: the builds of `tokenctl run`
          # live in its delegated subtree (leases/), and the FIFO holder
          # keeps their tokens across a crash (kill -9) and a restart. The
          # default, the whole cgroup, would kill every build with tokend.
          KillMode = "process";
          RuntimeDirectory = "tokend";
          # Running builds keep their FIFOs across a restart.
          RuntimeDirectoryPreserve = "restart";
          RuntimeDirectoryMode = if cfg.group == null then "0755" else "0750";
          # The job history, kept across reboots and nixos-rebuild.
          StateDirectory = "tokend";
          StateDirectoryMode = "0755";
          Group = mkIf (cfg.group != null) cfg.group;
          UMask = "0022";
          # Killed, tokend could neither collect tokens nor thaw what it
          # froze; build jobs get +500 (oom_score_adj), so they go first.
          OOMScoreAdjust = -900;

          # Hardening. tokend runs as root: it creates FIFOs owned by each
          # build's group, and reads and writes the cgroups of Nix builds, so
          # the cgroup tree stays writable (ProtectControlGroups = false;
          # ProtectKernelTunables leaves /sys/fs/cgroup to it) and /proc
          # stays whole (pressure, meminfo, other users' processes).
          ProtectSystem = "strict";
          ReadWritePaths = [ "/sys/fs/cgroup" ];
          ProtectControlGroups = false;
          ProtectKernelTunables = true;
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          # Only metrics_listen needs the network.
          PrivateNetwork = !metricsOn;
          NoNewPrivileges = true;
          ProtectKernelModules = true;
          # tokend reads the OOM killer's reports of build jobs from
          # /dev/kmsg (read only, CAP_SYSLOG where dmesg_restrict is set),
          # which ProtectKernelLogs and PrivateDevices would hide.
          ProtectKernelLogs = false;
          BindReadOnlyPaths = [ "/dev/kmsg" ];
          DeviceAllow = [ "/dev/kmsg r" ];
          ProtectClock = true;
          ProtectHostname = true;
          RestrictAddressFamilies = [ "AF_UNIX" ] ++ lib.optionals metricsOn [
            "AF_INET"
            "AF_INET6"
          ];
          RestrictNamespaces = true;
          # tokend collects the tokens a build above its share returns with
          # threads of real-time priority 1, which preempt the build's make
          # before it reads the token again (see jobserver.Collector);
          # RLIMIT_RTPRIO 1 allows that much and no more.
          RestrictRealtime = false;
          LimitRTPRIO = 1;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" ];
          CapabilityBoundingSet = [
            "CAP_CHOWN"
            "CAP_FOWNER"
            "CAP_DAC_OVERRIDE"
            "CAP_DAC_READ_SEARCH"
            "CAP_KILL"
            "CAP_SYS_PTRACE"
            "CAP_SYSLOG"
          ];
        };
      };
    }

    (mkIf cfg.nixPreBuildHook {
      nix.settings.pre-build-hook = "${cfg.package}/bin/tokend-nix-hook";
      # The hook runs with nix-daemon's environment and looks for
      # /run/tokend/tokend.sock unless TOKEND_SOCKET says otherwise.
      systemd.services.nix-daemon.environment.TOKEND_SOCKET = "${cfg.settings.runtime_dir}/tokend.sock";
      # systemd's default OOMPolicy=stop stops the whole nix-daemon unit,
      # every build with it, when the kernel OOM-kills any one process in
      # it. Builds joined to tokend run with oom_score_adj +500, so the
      # kernel's victim is a build job: the daemon and the other builds
      # go on, and make reports that one job.
      systemd.services.nix-daemon.serviceConfig.OOMPolicy = lib.mkDefault "continue";
    })

    (mkIf (metricsOn && cfg.openFirewall) {
      networking.firewall.allowedTCPPorts = [ metricsPort ];
    })

    (mkIf cfg.useCgroups {
      nix.settings.experimental-features = [ "cgroups" ];
      nix.settings.use-cgroups = true;
    })
  ]);
}
