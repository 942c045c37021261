// Command tokend-bench benchmarks tokend, cold and warm (with the history of
// an earlier run), against the ways builds are limited today (static -jN,
// serial, -jN -lN, a shared jobserver, kill-and-retry) on generated builds
// of a stand-in compiler and on real code compiled by g++ (Debian's
// nlohmann-json3 source, fetched and cached under ~/.cache/tokend-bench),
// inside cgroup memory limits, and writes a table, plots and raw results.
//
//	go run ./cmd/tokend-bench [--quick] [--out DIR] [--scenarios a,b] [--strategies x,y] [--reps N] [--limit-mib M]
//
// It needs root (it makes cgroups), a cgroup memory controller (v1, or
// cgroup2's) and cgroup2 for pressure, GNU make >= 4.4 and ninja >= 1.13
// (.ci/tools.sh builds them); the real scenarios install g++ and dpkg-dev
// with apt-get if they are missing. --quick is a smoke test of under two
// minutes on the stand-in scenarios only: it fetches and compiles nothing.
// SIGINT stops it, killing every build it started and removing its cgroups,
// and reports what it measured so far. --report re-renders the report and
// plots from a results.json.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/internal/bench"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tokend-bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	c := bench.Config{Log: os.Stderr}
	fs := flag.NewFlagSet("tokend-bench", flag.ContinueOnError)
	fs.BoolVar(&c.Quick, "quick", false, "tiny workloads, one repetition, fewer strategies: a smoke test of the harness")
	fs.StringVar(&c.Out, "out", "bench-out", "directory for report.md, results.json and the SVG plots")
	fs.StringVar(&c.Scenarios, "scenarios", "all", "comma-separated scenarios: light, heavy, hog, burst, gcc-pkgs, gcc-lto-hog, gcc-small, gcc-thrash, cargo-pkgs; real (the gcc-* ones and cargo-pkgs), standin (the others)")
	fs.StringVar(&c.Strategies, "strategies", "all", "comma-separated strategies: serial, static-jN, load-j8-lC, shared-C, retry-j4, tokend, tokend-warm (C: CPUs; tokend-warm needs tokend); all of them but tokend-est128 (tokend expecting 128 MiB a job), run only when named")
	fs.IntVar(&c.Reps, "reps", 2, "repetitions of every scenario and strategy (--quick: 1)")
	fs.Uint64Var(&c.Seed, "seed", 1, "seed of the randomized run order")
	fs.IntVar(&c.LimitMiB, "limit-mib", 6144, "memory limit of the stand-in scenarios' runs, in MiB (--quick: 1024); the real ones have their own")
	fs.DurationVar(&c.Sample, "sample", 100*time.Millisecond, "sampling interval of memory and running jobs")
	fs.StringVar(&c.BinDir, "bin", "", "directory with prebuilt tokend, tokenctl and fakecc (default: go build them)")
	fs.StringVar(&c.Make, "make", "", "GNU make >= 4.4 (default: $TOKEND_TOOLS_BIN, .ci/tools.sh's cache, $PATH)")
	fs.StringVar(&c.Ninja, "ninja", "", "ninja >= 1.13 (default: as for make)")
	rerender := fs.String("report", "", "run nothing: write the report and plots to --out from this results.json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; see --help", fs.Arg(0))
	}
	if *rerender != "" {
		return bench.Rerender(c.Out, *rerender)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.Quick {
		if !set["reps"] {
			c.Reps = 1
		}
		if !set["limit-mib"] {
			c.LimitMiB = 1024
		}
	}
	if c.Reps < 1 || c.LimitMiB < 256 {
		return errors.New("need --reps >= 1 and --limit-mib >= 256")
	}
	c.Command = strings.Join(append([]string{"go run ./cmd/tokend-bench"}, args...), " ")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := bench.Main(ctx, c); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "tokend-bench: wrote %s/report.md, results.json and plots\n", c.Out)
	return nil
}
