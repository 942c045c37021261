package broker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/buildtest"
)

// lockedBuilder is a strings.Builder safe for a logger's goroutines.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A full disk fails every save of the state file, ten times a second: the
// log said so ten to twenty times a second. Now once, then once per
// RepeatInterval with the count held back.
func TestFullDiskIsLoggedOnce(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to mount a small tmpfs")
	dir := t.TempDir()
	if err := unix.Mount("tokend-test", dir, "tmpfs", 0, "size=256k,mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	var out lockedBuilder
	log := LimitRepeats(hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Warn}), RepeatInterval)
	b, err := New(Options{RuntimeDir: dir, Budget: 4, Tick: 10 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, err := b.Register(LeaseRequest{Name: "starved", Owner: self(), GID: -1}); err != nil {
		t.Fatal(err)
	}
	// Fill the disk, then change the budget: every pass wants to save
	// before it grants, and cannot.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = filler.Write(make([]byte, 4<<10))
	}
	filler.Close()
	b.SetBudget(5) // a change to save, and tokens to grant
	time.Sleep(time.Second)
	// Two messages say it: the pass that cannot grant, the tick that
	// cannot save; each once.
	for _, msg := range []string{"cannot save state; handing out no tokens", "cannot save state; a restart will lose"} {
		if n := strings.Count(out.String(), msg); n != 1 {
			t.Errorf("over a second of a full disk with a 10ms tick the log says %d times %q, want once:\n%s", n, msg, out.String())
		}
	}
}

func TestLimitRepeatsCountsWhatItHeldBack(t *testing.T) {
	var out lockedBuilder
	log := LimitRepeats(hclog.New(&hclog.LoggerOptions{Output: &out}), time.Minute)
	now := time.Unix(1000, 0)
	log.(*repeatLimiter).seen.now = func() time.Time { return now }
	mem := log.Named("memory")
	for range 20 {
		log.Error("disk full", "error", "ENOSPC")
		mem.Error("disk full") // another logger's message is its own
		log.Info("fine")
	}
	now = now.Add(time.Minute)
	log.Error("disk full", "error", "ENOSPC")
	got := out.String()
	if n := strings.Count(got, "disk full"); n != 3 {
		t.Errorf("%d lines of a repeated error, want the first of each logger and one after the interval:\n%s", n, got)
	}
	if !strings.Contains(got, "repeated=19") || strings.Count(got, "fine") != 20 {
		t.Errorf("want the 19 held back counted and every info line written:\n%s", got)
	}
}
