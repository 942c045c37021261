// Command probe is the job that buildtest's build graphs run. It records
// when it starts and ends in a log, so a test can measure how many jobs a
// build ran at once.
//
//	probe job -log LOG -id ID [-sleep D] [-gate FILE]
//
// appends "S <unix-ns> ID" to LOG, sleeps D, waits for FILE to exist if
// -gate is given, then appends "E <unix-ns> ID". Each line is one write(2)
// to a file opened O_APPEND, so concurrent jobs never interleave.
//
// Invoked under the name rustc-wrapper (a symlink), it is a RUSTC_WRAPPER
// for cargo: argv[1] is the real rustc. Compilations (those with a
// --crate-name) are logged as "rustc:NAME" from the log named by
// $BUILDTEST_LOG, around the real rustc, a sleep of $BUILDTEST_SLEEP and,
// if $BUILDTEST_GATE is set, a wait for that file to exist.
// cargo's information queries (rustc -vV, --print) run rustc directly.
//
// A job ended by SIGINT, SIGTERM or SIGHUP (a client passing an interrupt
// on, a test's kill) still appends its "E" line, then dies of that signal,
// so its parent sees the death it would have seen without the probe and
// the log says when the job stopped running. Only SIGKILL ends a started
// job without an "E".
//
// It is built by buildtest from this file alone, with no dependencies.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if filepath.Base(os.Args[0]) == "rustc-wrapper" {
		os.Exit(rustcWrapper(os.Args[1:]))
	}
	if len(os.Args) < 2 || os.Args[1] != "job" {
		fmt.Fprintln(os.Stderr, "usage: probe job -log LOG -id ID [-sleep D] [-gate FILE]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("job", flag.ExitOnError)
	log := fs.String("log", "", "log file to append start and end stamps to")
	id := fs.String("id", "", "job name recorded in the log")
	sleep := fs.Duration("sleep", 0, "how long the job runs")
	gate := fs.String("gate", "", "after sleeping, wait until this file exists")
	fs.Parse(os.Args[2:])
	if *log == "" || *id == "" {
		fmt.Fprintln(os.Stderr, "probe job: -log and -id are required")
		os.Exit(2)
	}
	j := startJob(*log, *id)
	time.Sleep(*sleep)
	if *gate != "" {
		if err := waitFor(*gate, 5*time.Minute); err != nil {
			fatal(err)
		}
	}
	j.end()
}

func rustcWrapper(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "rustc-wrapper: no rustc to run")
		return 2
	}
	name := crateName(args[1:])
	log := os.Getenv("BUILDTEST_LOG")
	if name == "" || log == "" {
		// An information query such as rustc -vV: become rustc.
		rustc, err := exec.LookPath(args[0])
		if err != nil {
			fatal(err)
		}
		fatal(syscall.Exec(rustc, args, os.Environ()))
	}
	sleep, _ := time.ParseDuration(os.Getenv("BUILDTEST_SLEEP"))
	gate := os.Getenv("BUILDTEST_GATE")
	j := startJob(log, "rustc:"+name)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	time.Sleep(sleep)
	if gate != "" {
		if err := waitFor(gate, 5*time.Minute); err != nil {
			fatal(err)
		}
	}
	j.end()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		fatal(err)
	}
	return 0
}

// crateName is the --crate-name of a compilation, or "" for cargo's
// information queries (their crate name is ___, or they have none).
func crateName(args []string) string {
	for i, a := range args {
		if a == "-vV" || a == "-V" || a == "--version" || a == "-" || strings.HasPrefix(a, "--print") {
			return ""
		}
		if a == "--crate-name" && i+1 < len(args) && args[i+1] != "___" {
			return args[i+1]
		}
	}
	return ""
}

// job is one job's stamps in the log: its start, then its end once,
// whether it ends by itself or by a signal.
type job struct {
	mu      sync.Mutex
	log, id string
	ended   bool
}

// startJob stamps the job's start, after which SIGINT, SIGTERM and SIGHUP
// stamp its end before they kill it.
func startJob(log, id string) *job {
	j := &job{log: log, id: id}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	if err := stamp(log, 'S', id); err != nil {
		fatal(err)
	}
	go func() {
		sig := <-sigs
		j.mu.Lock() // held until the process dies: no end is stamped twice
		if !j.ended {
			stamp(j.log, 'E', j.id)
			j.ended = true
		}
		signal.Reset()
		syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}()
	return j
}

// end stamps the job's end.
func (j *job) end() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := stamp(j.log, 'E', j.id); err != nil {
		fatal(err)
	}
	j.ended = true
}

func stamp(log string, kind byte, id string) error {
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		return err
	}
	line := fmt.Sprintf("%c %d %s\n", kind, time.Now().UnixNano(), id)
	_, err = f.Write([]byte(line))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gate %s did not open within %v", path, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "probe:", err)
	os.Exit(1)
}
