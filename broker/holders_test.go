package broker

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/internal/fileid"
	"github.com/tokend/tokend/jobserver"
)

// hungFUSE mounts a FUSE file system whose server never answers, as a
// wedged FUSE daemon or a dead NFS server leaves one: every stat of a file
// in it waits until the connection is aborted, which happens when t ends.
func hungFUSE(t *testing.T) string {
	t.Helper()
	buildtest.Require(t, os.Geteuid() == 0, "root, to mount a FUSE file system")
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	buildtest.Require(t, err == nil, fmt.Sprintf("/dev/fuse (%v)", err))
	mnt := t.TempDir()
	if err := unix.Mount("tokend-test", mnt, "fuse", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", dev.Fd())); err != nil {
		dev.Close()
		t.Fatalf("mount fuse: %v", err)
	}
	t.Cleanup(func() {
		dev.Close() // aborts the connection: waiting requests fail
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	return mnt
}

// A process holding a file of a hung file system stalled the scan for
// jobserver holders (a stat of every /proc/PID/fd/N), and with it every
// token. The scan reads only procfs and finds the holders regardless.
func TestHolderScanDoesNotTouchHungFileSystems(t *testing.T) {
	mnt := hungFUSE(t)
	// An O_PATH open of the mount's root asks the server nothing.
	fd, err := unix.Open(mnt, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hung := os.NewFile(uintptr(fd), mnt)
	defer hung.Close()
	f, err := jobserver.Create(filepath.Join(t.TempDir(), "js"), jobserver.FIFOOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Remove()
	js, err := os.OpenFile(f.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer js.Close()
	holder := exec.Command("sleep", "60")
	holder.ExtraFiles = []*os.File{hung, js}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()

	id, err := fileid.Of(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan map[fileid.ID]int, 1)
	go func() {
		counts, err := countHolders("/proc", map[fileid.ID]bool{id: true}, 0)
		if err != nil {
			t.Error(err)
		}
		done <- counts
	}()
	select {
	case counts := <-done:
		if counts[id] != 1 {
			t.Errorf("found %d holders of the fifo, want the one child", counts[id])
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the holder scan hangs on a file of a hung file system")
	}
}
