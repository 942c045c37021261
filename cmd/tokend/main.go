// Command tokend is the host's jobserver broker: it owns a budget of job
// tokens and hands them to builds through one jobserver FIFO per build.
//
//	tokend [--config FILE] [--runtime-dir DIR] [--tokens N] [--lease-group G] [--log-level L]
//
// With no flags it runs on embedded defaults: runtime directory /run/tokend
// as root, $XDG_RUNTIME_DIR/tokend otherwise, and a budget of one job per
// CPU. SIGTERM and SIGINT stop it, leaving running builds their tokens;
// SIGHUP reloads the configuration file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/broker"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tokend:", err)
		os.Exit(1)
	}
}

// settings is the configuration file as overridden by the flags given.
type settings struct {
	configPath string
	flags      *flag.FlagSet
	override   broker.Config
}

func parseFlags(args []string) (*settings, error) {
	s := &settings{flags: flag.NewFlagSet("tokend", flag.ContinueOnError)}
	fs := s.flags
	fs.StringVar(&s.configPath, "config", "", "configuration file (TOML); flags given win over it")
	fs.StringVar(&s.override.RuntimeDir, "runtime-dir", "", "directory for the socket, state and FIFOs (config: runtime_dir)")
	fs.IntVar(&s.override.Tokens, "tokens", 0, "fix the budget at N jobs (config: tokens)")
	fs.StringVar(&s.override.LeaseGroup, "lease-group", "", "group whose members may register leases (config: lease_group)")
	fs.StringVar(&s.override.LogLevel, "log-level", "", "trace, debug, info, warn or error (config: log_level)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q; see tokend --help", fs.Arg(0))
	}
	return s, nil
}

// load reads the configuration file, if any, and applies the flags given.
func (s *settings) load() (broker.Config, error) {
	c := broker.DefaultConfig()
	if s.configPath != "" {
		var err error
		if c, err = c.LoadConfig(s.configPath); err != nil {
			return c, err
		}
	}
	s.flags.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "runtime-dir":
			c.RuntimeDir = s.override.RuntimeDir
		case "tokens":
			c.Tokens = s.override.Tokens
		case "lease-group":
			c.LeaseGroup = s.override.LeaseGroup
		case "log-level":
			c.LogLevel = s.override.LogLevel
		}
	})
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("flags: %w", err)
	}
	return c, nil
}

func run(args []string) error {
	s, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg, err := s.load()
	if err != nil {
		return err
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "tokend", Level: hclog.LevelFromString(cfg.LogLevel), Output: os.Stderr})

	b, err := broker.New(broker.Options{RuntimeDir: cfg.RuntimeDir, Budget: cfg.Tokens, Logger: log})
	if err != nil {
		return err
	}
	srv, err := broker.NewServer(b, cfg.LeaseGroup, log.Named("api"))
	if err != nil {
		return err
	}
	socket := broker.SocketPath(cfg.RuntimeDir)
	ln, err := broker.Listen(socket)
	if err != nil {
		return err
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	brokerDone := make(chan error, 1)
	go func() { brokerDone <- b.Run(ctx) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()

	st := b.Status()
	log.Info("tokend ready", "socket", socket, "budget", st.Budget, "budget_reason", st.BudgetReason, "leases", len(st.Leases))
	notifySystemd(log, "READY=1")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(s, cfg, b, log)
				continue
			}
			log.Info("stopping", "signal", sig.String())
			notifySystemd(log, "STOPPING=1")
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			serr := srv.Shutdown(shutdownCtx)
			cancel()
			stop()
			return errors.Join(serr, <-brokerDone)
		case err := <-serveDone:
			stop()
			<-brokerDone
			return fmt.Errorf("control api stopped: %w", err)
		case err := <-brokerDone:
			return fmt.Errorf("broker stopped: %w", err)
		}
	}
}

// reload applies a changed configuration file. Settings that need a new
// socket or directory take effect at the next start, and the log says so.
func reload(s *settings, old broker.Config, b *broker.Broker, log hclog.Logger) {
	cfg, err := s.load()
	if err != nil {
		log.Error("reload failed; keeping the running configuration", "error", err)
		return
	}
	if cfg.RuntimeDir != old.RuntimeDir || cfg.LeaseGroup != old.LeaseGroup {
		log.Warn("runtime_dir and lease_group change only at restart")
	}
	log.SetLevel(hclog.LevelFromString(cfg.LogLevel))
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
