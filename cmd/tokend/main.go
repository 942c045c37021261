// Command tokend is the host's jobserver broker: it owns a budget of job
// tokens and hands them to builds through one jobserver FIFO per build.
//
//	tokend [--config FILE] [--runtime-dir DIR] [--state-dir DIR] [--tokens N] [--lease-group G] [--log-level L]
//	       [--memory-cgroup DIR] [--memory-pressure FILE] [--lease-cgroups DIR|off]
//	       [--memory-reserve SIZE] [--memory-tick D] [--growth-interval D]
//	       [--cpu-multiple X] [--job-estimate SIZE]
//
// With no flags it runs on embedded defaults: runtime directory /run/tokend
// as root, $XDG_RUNTIME_DIR/tokend otherwise, state directory (the job
// history) /var/lib/tokend as root, $XDG_STATE_HOME/tokend otherwise, and
// a budget the memory
// controller sizes from the host's memory headroom and pressure, capped at
// 1.5 jobs per CPU. SIGTERM and SIGINT stop it, leaving running builds
// their tokens; SIGHUP reloads the configuration file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/broker"
	"github.com/tokend/tokend/broker/control"
	"github.com/tokend/tokend/broker/memory"
	"github.com/tokend/tokend/internal/version"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == holderCommand {
		if err := runHolder(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "tokend:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tokend:", err)
		os.Exit(1)
	}
}

// usage heads tokend --help; the flags follow it.
const usage = `tokend is the host's jobserver broker: it owns a budget of job slots, sized
from memory headroom and pressure, and hands them to builds through one
jobserver FIFO per build (tokenctl run, tokend-nix-hook).

Usage:
  tokend [--config FILE] [flags]

Examples:
  sudo tokend                                   # embedded defaults; socket /run/tokend/tokend.sock
  tokend --tokens 6 --runtime-dir /tmp/tokend   # a fixed budget, as any user
  sudo tokend --config /etc/tokend.toml         # TOML; every key has a flag of the same name

Flags:
`

// options are the command line: the configuration file and the flags
// given over it.
type options struct {
	version    bool
	configPath string
	flags      []given
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("tokend", flag.ContinueOnError)
	fs.StringVar(&o.configPath, "config", "", "configuration file (TOML); flags given win over it")
	defineFlags(fs, &o.flags)
	fs.BoolVar(&o.version, "version", false, "print tokend's version and exit")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q; see tokend --help", fs.Arg(0))
	}
	return o, nil
}

// load reads the configuration file, if any, applies the flags given and
// checks the result.
func (o *options) load() (Config, error) {
	c := DefaultConfig()
	if o.configPath != "" {
		if err := c.decodeFile(o.configPath); err != nil {
			return c, err
		}
	}
	return apply(c, o.flags, o.configPath)
}

func run(args []string) error {
	s, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if s.version {
		fmt.Println("tokend", version.String())
		return nil
	}
	cfg, err := s.load()
	if err != nil {
		return err
	}
	// A warning or error that keeps happening (a full disk) is written
	// once per broker.RepeatInterval, with the count held back.
	log := broker.LimitRepeats(hclog.New(&hclog.LoggerOptions{Name: "tokend", Level: hclog.LevelFromString(cfg.LogLevel), Output: os.Stderr}), broker.RepeatInterval)

	cgroups, err := leaseCgroups(cfg, log)
	if err != nil {
		return err
	}
	protectSelf(log)
	opts := broker.Options{RuntimeDir: cfg.RuntimeDir, Budget: cfg.Tokens, OOMScoreAdj: cfg.OOMScoreAdj, ShareGrace: cfg.ShareGrace, Logger: log}
	if cgroups != nil {
		opts.Cgroups = cgroups
	}
	// Started before the broker adopts, so it holds every FIFO there is,
	// in a runtime directory checked first.
	if err := broker.CheckRuntimeDir(cfg.RuntimeDir); err != nil {
		return err
	}
	if holder, err := startHolder(cfg.RuntimeDir); err != nil {
		log.Warn("no fifo holder; a crash of tokend loses the free tokens of leases no client holds", "error", err)
	} else {
		opts.Holder = holder
	}
	b, err := broker.New(opts)
	if err != nil {
		return err
	}
	hist, err := control.OpenHistory(cfg.StateDir, cfg.RuntimeDir, log.Named("history"))
	if err != nil {
		return err
	}
	ctl, err := control.New(b, control.Config{
		Params:  params(cfg),
		Memory:  memory.Config{Cgroup: cfg.MemoryCgroup, Pressure: cfg.MemoryPressure},
		Cgroups: cgroups,
		History: hist,
		Logger:  log.Named("memory"),
	})
	if err != nil {
		return err
	}
	srv, err := broker.NewServer(b, cfg.LeaseGroup, log.Named("api"))
	if err != nil {
		return err
	}
	srv.ServeHistory(hist)
	socket := api.SocketPath(cfg.RuntimeDir)
	ln, err := broker.Listen(socket)
	if err != nil {
		return err
	}
	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		if metricsSrv, err = serveMetrics(cfg.MetricsListen, b.MetricsHandler(), log.Named("metrics")); err != nil {
			return err
		}
	}

	// Signals are ours before the socket answers: a SIGHUP sent as soon
	// as tokend is seen up (a reload right after start) must reload, not
	// kill it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	brokerDone := make(chan error, 1)
	go func() { brokerDone <- b.Run(ctx) }()
	controlDone := make(chan error, 1)
	go func() { controlDone <- ctl.Run(ctx) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()

	st := b.Status()
	log.Info("tokend ready", "socket", socket, "budget", st.Budget, "budget_reason", st.BudgetReason, "leases", len(st.Leases))
	notifySystemd(log, "READY=1")

	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(s, cfg, b, ctl, log)
				continue
			}
			log.Info("stopping", "signal", sig.String())
			notifySystemd(log, "STOPPING=1")
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			serr := srv.Shutdown(shutdownCtx)
			if metricsSrv != nil {
				serr = errors.Join(serr, metricsSrv.Shutdown(shutdownCtx))
			}
			cancel()
			stop()
			return errors.Join(serr, <-controlDone, <-brokerDone)
		case err := <-serveDone:
			stop()
			<-controlDone
			<-brokerDone
			return fmt.Errorf("control api stopped: %w", err)
		case err := <-brokerDone:
			stop()
			<-controlDone
			return fmt.Errorf("broker stopped: %w", err)
		}
	}
}

// leaseCgroups makes the parent of the tokenctl leases' cgroups, unless
// configured off. Without root or a cgroup2 mount tokend runs on without
// them: builds then cannot be frozen, which the log says.
func leaseCgroups(cfg Config, log hclog.Logger) (*control.Cgroups, error) {
	if cfg.LeaseCgroups == "off" {
		return nil, nil
	}
	parent := cfg.LeaseCgroups
	if parent == "" {
		var err error
		if parent, err = control.DefaultLeaseCgroups(cfg.MemoryCgroup); err != nil {
			log.Warn("no cgroups for tokenctl leases; the memory brake cannot freeze their builds", "error", err)
			return nil, nil
		}
	}
	cg, err := control.NewCgroups(parent, cfg.LeaseCgroups == "", log.Named("cgroups"))
	if err != nil && cfg.LeaseCgroups == "" {
		log.Warn("no cgroups for tokenctl leases; the memory brake cannot freeze their builds", "error", err)
		return nil, nil
	}
	return cg, err
}

// params are the memory controller's parameters in cfg.
func params(cfg Config) control.Params {
	return control.Params{
		Reserve: uint64(cfg.MemoryReserve), Tick: cfg.MemoryTick, GrowthInterval: cfg.GrowthInterval,
		CPUMultiple: cfg.CPUMultiple, JobEstimate: uint64(cfg.JobEstimate),
	}
}

// reload applies a changed configuration file. Settings that need a new
// socket, directory or memory domain take effect at the next start, and the
// log says so.
func reload(s *options, old Config, b *broker.Broker, ctl *control.Controller, log hclog.Logger) {
	cfg, err := s.load()
	if err != nil {
		log.Error("reload failed; keeping the running configuration", "error", err)
		return
	}
	if cfg.RuntimeDir != old.RuntimeDir || cfg.StateDir != old.StateDir || cfg.LeaseGroup != old.LeaseGroup || cfg.MemoryCgroup != old.MemoryCgroup ||
		cfg.MemoryPressure != old.MemoryPressure || cfg.LeaseCgroups != old.LeaseCgroups || cfg.MetricsListen != old.MetricsListen ||
		cfg.ShareGrace != old.ShareGrace {
		log.Warn("runtime_dir, state_dir, lease_group, memory_cgroup, memory_pressure, lease_cgroups, metrics_listen and share_grace change only at restart")
	}
	log.SetLevel(hclog.LevelFromString(cfg.LogLevel))
	if err := ctl.Reconfigure(params(cfg)); err != nil {
		log.Error("reload failed", "error", err)
		return
	}
	if err := b.Configure(cfg.Tokens); err != nil {
		log.Error("reload failed", "error", err)
		return
	}
	log.Info("configuration reloaded", "tokens", cfg.Tokens, "log_level", cfg.LogLevel)
}

// notifySystemd tells systemd about readiness when it runs tokend as a
// Type=notify service; elsewhere it does nothing.
func notifySystemd(log hclog.Logger, state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		log.Warn("cannot notify systemd", "error", err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}
}
