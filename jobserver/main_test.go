package jobserver_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tokend/tokend/jobserver"
)

// childEnv makes the test binary, run again by a test, act as a jobserver
// client instead of running tests (see runChild).
const childEnv = "JOBSERVER_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

// runChild is a Go jobserver client in a process of its own. In mode
// "hold" it joins the jobserver named in its environment, takes
// $JOBSERVER_TEST_SLOTS slots, says so on stdout, holds them until stdin
// closes, then releases them.
//
// In mode "once", run as a make recipe, it joins the jobserver named in its
// environment, takes its implicit slot and one token, releases them and
// exits 0, printing "LABEL: once ok" or "LABEL: once error: ..." for the
// test to read, LABEL being $JOBSERVER_TEST_LABEL.
func runChild(mode string) int {
	if mode == "once" {
		label := os.Getenv("JOBSERVER_TEST_LABEL")
		if err := once(); err != nil {
			fmt.Printf("%s: once error: %v\n", label, err)
		} else {
			fmt.Printf("%s: once ok\n", label)
		}
		return 0
	}
	if mode != "hold" {
		fmt.Println("unknown child mode", mode)
		return 2
	}
	c, err := jobserver.FromEnv()
	if err != nil {
		fmt.Println("error:", err)
		return 3
	}
	n, _ := strconv.Atoi(os.Getenv("JOBSERVER_TEST_SLOTS"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var slots []jobserver.Slot
	for range n {
		s, err := c.Acquire(ctx)
		if err != nil {
			fmt.Println("error:", err)
			return 4
		}
		slots = append(slots, s)
	}
	fmt.Printf("held %d implicit=%v\n", len(slots), len(slots) > 0 && slots[0].Implicit())
	io.Copy(io.Discard, os.Stdin)
	for _, s := range slots {
		if err := c.Release(s); err != nil {
			fmt.Println("error:", err)
			return 5
		}
	}
	fmt.Println("released")
	return 0
}

func once() error {
	c, err := jobserver.FromEnv()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	implicit, err := c.Acquire(ctx)
	if err != nil {
		return err
	}
	token, err := c.Acquire(ctx)
	if err != nil {
		return err
	}
	if !implicit.Implicit() || token.Implicit() {
		return fmt.Errorf("slots out of order")
	}
	if err := c.Release(token); err != nil {
		return err
	}
	return c.Release(implicit)
}
