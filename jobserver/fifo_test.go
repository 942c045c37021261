package jobserver

import (
	"errors"
	"github.com/tokend/tokend/internal/buildtest"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// newFIFO creates a FIFO with n tokens in a temporary directory.
func newFIFO(t *testing.T, n int) *FIFO {
	t.Helper()
	f, err := Create(filepath.Join(t.TempDir(), "js"), FIFOOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Remove() })
	if err := f.Add(n); err != nil {
		t.Fatal(err)
	}
	return f
}

func mustFree(t *testing.T, f *FIFO) int {
	t.Helper()
	n, err := f.Free()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func wantCounts(t *testing.T, f *FIFO, free, granted int) {
	t.Helper()
	if got := mustFree(t, f); got != free {
		t.Errorf("Free() = %d, want %d", got, free)
	}
	if got := f.Granted(); got != granted {
		t.Errorf("Granted() = %d, want %d", got, granted)
	}
}

// wantErr checks that err is not nil and mentions each of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func stat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// The mode is what was asked for whatever the umask; zero means 0600.
// Not parallel: the umask belongs to the whole process.
func TestCreateModeIgnoresUmask(t *testing.T) {
	masks := []int{0, 0o022, 0o077, 0o177}
	if os.Geteuid() == 0 {
		masks = append(masks, 0o777) // only root can open a FIFO of mode 0
	}
	for _, mask := range masks {
		for _, mode := range []fs.FileMode{0, 0o600, 0o660, 0o666, 0o640} {
			old := syscall.Umask(mask)
			path := filepath.Join(t.TempDir(), "js")
			f, err := Create(path, FIFOOptions{Mode: mode, GID: -1})
			syscall.Umask(old)
			if err != nil {
				t.Fatalf("umask %03o mode %03o: %v", mask, mode, err)
			}
			want := uint32(mode)
			if mode == 0 {
				want = 0o600
			}
			st := stat(t, path)
			if st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o7777 != want {
				t.Errorf("umask %03o mode %03o: file mode %o, want FIFO %03o", mask, mode, st.Mode, want)
			}
			f.Remove()
		}
	}
}

func TestCreateGroup(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to give a FIFO to another group")
	for _, gid := range []int{65534, 0} {
		path := filepath.Join(t.TempDir(), "js")
		f, err := Create(path, FIFOOptions{Mode: 0o660, GID: gid})
		if err != nil {
			t.Fatal(err)
		}
		if st := stat(t, path); int(st.Gid) != gid || st.Uid != 0 {
			t.Errorf("GID %d: owner %d:%d, want 0:%d", gid, st.Uid, st.Gid, gid)
		}
		f.Remove()
	}
	// GID -1 keeps the creator's group.
	path := filepath.Join(t.TempDir(), "js")
	f, err := Create(path, FIFOOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Remove()
	if st := stat(t, path); int(st.Gid) != os.Getegid() {
		t.Errorf("GID -1: group %d, want %d", st.Gid, os.Getegid())
	}
}

func TestCreateGroupNotAllowed(t *testing.T) {
	if buildtest.RerunAsNobody(t) {
		return // root may give a FIFO to any group
	}
	path := filepath.Join(t.TempDir(), "js")
	_, err := Create(path, FIFOOptions{GID: 0})
	wantErr(t, err, path, "set group 0")
	if _, serr := os.Lstat(path); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("failed Create left %s behind", path)
	}
}

func TestCreateRefusesExistingPath(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), dangling); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{target, fifo, dangling, link, dir} {
		_, err := Create(path, FIFOOptions{GID: -1})
		wantErr(t, err, path, "already exists", "remove it")
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("Create(%s) error %v is not fs.ErrExist", path, err)
		}
	}
	// Nothing was created through the dangling symlink.
	if _, err := os.Lstat(filepath.Join(dir, "nowhere")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create followed a dangling symlink")
	}
	if b, _ := os.ReadFile(target); string(b) != "x" {
		t.Errorf("Create changed an existing file")
	}
}

func TestCreateMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "js")
	_, err := Create(path, FIFOOptions{GID: -1})
	wantErr(t, err, path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v is not fs.ErrNotExist", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path  string
		parts []string
	}{
		{regular, []string{"not a FIFO", "remove it or choose another path"}},
		{sub, []string{"not a FIFO", "remove it or choose another path"}},
		{"/dev/null", []string{"not a FIFO", "remove it or choose another path"}},
		{link, []string{"symlink", "remove it"}},
		{filepath.Join(dir, "missing"), []string{"no such file", "start a new one"}},
	} {
		f, err := Open(c.path, 0)
		if err == nil {
			f.Close()
		}
		wantErr(t, err, append([]string{c.path}, c.parts...)...)
	}
	_, err := Open(fifo, -1)
	wantErr(t, err, fifo, "granted -1")
	_, err = Open(fifo, MaxTokens+1)
	wantErr(t, err, fifo, "granted 65536")
}

func TestOpenRefusesForeignFIFO(t *testing.T) {
	buildtest.Require(t, os.Geteuid() == 0, "root, to make a FIFO owned by someone else")
	path := filepath.Join(t.TempDir(), "js")
	if err := unix.Mkfifo(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, 0)
	wantErr(t, err, path, "owned by uid 65534", "remove it or run as its owner")
}

// Open adopts a FIFO of ours, such as one a restarted broker left to running
// clients: the tokens in the pipe are still there.
func TestOpenAdopts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "js")
	f, err := Create(path, FIFOOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(5); err != nil {
		t.Fatal(err)
	}
	// A client keeps the pipe alive across the broker's restart and holds
	// two tokens.
	client, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	held := make([]byte, 2)
	if _, err := client.Read(held); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed the FIFO: %v", err)
	}
	g, err := Open(path, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	wantCounts(t, g, 3, 5)
	if _, err := client.Write(held); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, g, 5, 5)
}

func TestAccounting(t *testing.T) {
	f := newFIFO(t, 3)
	wantCounts(t, f, 3, 3)
	if err := f.Add(0); err != nil {
		t.Fatal(err)
	}
	wantErr(t, f.Add(-1), f.Path(), "negative")
	wantCounts(t, f, 3, 3)

	n, err := f.Take(2)
	if err != nil || n != 2 {
		t.Fatalf("Take(2) = %d, %v", n, err)
	}
	wantCounts(t, f, 1, 1)
	// Take removes only free tokens, and never waits for more.
	n, err = f.Take(5)
	if err != nil || n != 1 {
		t.Fatalf("Take(5) = %d, %v, want 1", n, err)
	}
	wantCounts(t, f, 0, 0)
	n, err = f.Take(1)
	if err != nil || n != 0 {
		t.Fatalf("Take on an empty FIFO = %d, %v, want 0 at once", n, err)
	}
	for _, k := range []int{0, -3, 1 << 20} {
		if n, err := f.Take(k); err != nil || n != 0 {
			t.Errorf("Take(%d) on an empty FIFO = %d, %v", k, n, err)
		}
	}
	// A count over the ceiling takes what there is.
	if err := f.Add(MaxTokens); err != nil {
		t.Fatal(err)
	}
	n, err = f.Take(1 << 20)
	if err != nil || n != MaxTokens {
		t.Fatalf("Take(1<<20) = %d, %v, want %d", n, err, MaxTokens)
	}
	wantCounts(t, f, 0, 0)
}

func TestForgetAndTakeExcess(t *testing.T) {
	f := newFIFO(t, 4)
	client, err := os.OpenFile(f.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	held := make([]byte, 3)
	if _, err := client.Read(held); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, 1, 4)
	// Take cannot reach tokens a client holds.
	if n, _ := f.Take(4); n != 1 {
		t.Errorf("Take(4) with 3 held = %d, want 1", n)
	}
	wantCounts(t, f, 0, 3)

	// The client was killed holding one: the caller writes it off.
	wantErr(t, f.Forget(4), f.Path(), "only 3")
	wantErr(t, f.Forget(-1), f.Path())
	if err := f.Forget(1); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, 0, 2)

	// A client writes back more than it took.
	if _, err := client.Write([]byte("++++")); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, 4, 2)
	n, err := f.TakeExcess()
	if err != nil || n != 2 {
		t.Fatalf("TakeExcess = %d, %v, want 2", n, err)
	}
	wantCounts(t, f, 2, 2)
	if n, err := f.TakeExcess(); err != nil || n != 0 {
		t.Errorf("TakeExcess with nothing extra = %d, %v", n, err)
	}
	// Tokens in use are not excess.
	if _, err := client.Read(held[:2]); err != nil {
		t.Fatal(err)
	}
	if n, err := f.TakeExcess(); err != nil || n != 0 {
		t.Errorf("TakeExcess with tokens in use = %d, %v", n, err)
	}
	wantCounts(t, f, 0, 2)
}

func TestAddCeiling(t *testing.T) {
	f := newFIFO(t, 0)
	wantErr(t, f.Add(MaxTokens+1), f.Path(), "65536", "ceiling of 65535")
	wantCounts(t, f, 0, 0)
	if err := f.Add(MaxTokens); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, MaxTokens, MaxTokens)
	wantErr(t, f.Add(1), f.Path(), "65536", "ceiling of 65535")
	if n, _ := f.Take(1); n != 1 {
		t.Fatal("Take(1) took nothing")
	}
	if err := f.Add(1); err != nil {
		t.Errorf("Add(1) back up to the ceiling: %v", err)
	}
}

func TestClosedAndRemoved(t *testing.T) {
	f := newFIFO(t, 1)
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(f.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Remove left %s: %v", f.Path(), err)
	}
	if err := f.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	for name, err := range map[string]error{
		"Add":        f.Add(1),
		"Take":       second(f.Take(1)),
		"Free":       second(f.Free()),
		"TakeExcess": second(f.TakeExcess()),
	} {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s after Remove: %v, want os.ErrClosed", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

// At the ceiling, a client can read tokens and write them back one by one
// without blocking, and the server's own writes of awkward sizes all fit:
// the FIFO grows its pipe beyond the 64 KiB default, which would not do.
func TestCeilingInAnyOrder(t *testing.T) {
	f := newFIFO(t, 0)
	if f.limit != MaxTokens {
		t.Fatalf("limit %d, want %d (pipe of %d bytes, grow error %v)", f.limit, MaxTokens, f.capacity, f.growErr)
	}
	// Writes that leave every other page nearly empty.
	for i := 0; f.Granted() < MaxTokens; i++ {
		n := 4090
		if i%2 == 1 {
			n = 7
		}
		if err := f.Add(min(n, MaxTokens-f.Granted())); err != nil {
			t.Fatalf("at %d granted: %v", f.Granted(), err)
		}
	}
	n, err := f.Take(MaxTokens)
	if err != nil || n != MaxTokens {
		t.Fatalf("Take = %d, %v", n, err)
	}
	if err := f.Add(MaxTokens); err != nil {
		t.Fatal(err)
	}
	client, err := unix.Open(f.Path(), unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(client)
	if n := readWriteBack(t, client, 3); n != 3 {
		t.Errorf("client wrote back %d of 3 tokens at the ceiling", n)
	}
	wantCounts(t, f, MaxTokens, MaxTokens)

	// Why: the same on a pipe of the default size.
	bare := filepath.Join(t.TempDir(), "bare")
	if err := unix.Mkfifo(bare, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(bare, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if size, _ := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0); size != 65536 || os.Getpagesize() != 4096 {
		t.Skipf("default pipe of %d bytes in pages of %d: not the case measured", size, os.Getpagesize())
	}
	if w, err := unix.Write(fd, make([]byte, MaxTokens)); w != MaxTokens {
		t.Fatalf("filling a default pipe: %d, %v", w, err)
	}
	if n := readWriteBack(t, fd, 3); n != 1 {
		t.Errorf("a client wrote back %d of 3 tokens to a default pipe holding 65,535; measured 1 on Linux 6.18", n)
	}
}

// readWriteBack reads n bytes from fd and writes them back one at a time,
// as a client would, and returns how many writes did not block.
func readWriteBack(t *testing.T, fd, n int) int {
	t.Helper()
	b := make([]byte, n)
	if r, err := unix.Read(fd, b); r != n {
		t.Fatalf("read %d: %v", r, err)
	}
	ok := 0
	for i := range n {
		if w, _ := unix.Write(fd, b[i:i+1]); w == 1 {
			ok++
		}
	}
	return ok
}

// Reissued tokens stop counting as granted; what clients return is
// swallowed until they are paid back; DropReissued forgets them.
func TestReissue(t *testing.T) {
	f := newFIFO(t, 4)
	c, err := os.OpenFile(f.Path(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, f.Reissue(5), "reissue 5 tokens", "only 4 were granted")
	if err := f.Reissue(3); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, f, 0, 1)
	if _, err := c.Write([]byte("++")); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Recover(); n != 2 || err != nil {
		t.Fatalf("Recover() = %d, %v; want 2 swallowed", n, err)
	}
	wantCounts(t, f, 0, 1)
	if _, err := c.Write([]byte("++")); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Recover(); n != 1 || err != nil {
		t.Fatalf("Recover() = %d, %v; want the 1 still reissued swallowed", n, err)
	}
	if n, err := f.Recover(); n != 0 || err != nil {
		t.Fatalf("Recover() with nothing reissued = %d, %v; want 0", n, err)
	}
	wantCounts(t, f, 1, 1)
	if f.Reissued() != 0 {
		t.Fatalf("%d reissued after all came back, want 0", f.Reissued())
	}
	if err := f.Reissue(1); err != nil {
		t.Fatal(err)
	}
	if n := f.DropReissued(); n != 1 || f.Reissued() != 0 {
		t.Fatalf("DropReissued() = %d, then %d reissued; want 1, then 0", n, f.Reissued())
	}
}
