package broker

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/fileid"
)

// countJobs counts the children of the processes holding a FIFO, and not
// the processes that only hold it; a FIFO nobody holds has no count.
func TestCountJobs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "js")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	fifo, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fifo.Close()
	id, err := fileid.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	if jobs, err := countJobs("/proc", map[fileid.ID]bool{id: true}, 0); err != nil || len(jobs) != 0 {
		t.Fatalf("countJobs of a FIFO only the test holds = %v, %v; want no count", jobs, err)
	}
	// A client running two jobs, and one running none; the fd is
	// closed for the jobs, as make and ninja close it.
	start := func(script string) {
		cmd := exec.Command("sh", "-c", script)
		cmd.ExtraFiles = []*os.File{fifo}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	start("sleep 60 3>&- & sleep 60 3>&- & : > " + filepath.Join(dir, "started") + "; wait")
	start("exec sleep 60")
	deadline := time.Now().Add(30 * time.Second)
	for {
		jobs, err := countJobs("/proc", map[fileid.ID]bool{id: true}, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, started := os.Stat(filepath.Join(dir, "started"))
		if started == nil && jobs[id] == 2 {
			break
		}
		if _, seen := jobs[id]; !seen {
			t.Fatalf("no client of the FIFO seen: %v", jobs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("counted %d jobs of the FIFO's clients, want 2", jobs[id])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadTasks(t *testing.T) {
	ppid, threads, ok := readTasks(filepath.Join("/proc", "self"))
	if !ok || ppid != os.Getppid() || threads < 1 {
		t.Fatalf("readTasks(/proc/self) = %d, %d, %v; want parent %d and a thread or more", ppid, threads, ok, os.Getppid())
	}
	if _, _, ok := readTasks(t.TempDir()); ok {
		t.Fatal("readTasks of a directory without a stat file succeeded")
	}
}
