package broker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/jobserver"
)

// runDir is tokend's runtime directory and its leases directory, opened
// once and checked, so that a directory someone else owns or may write is
// refused at start, and every file inside is reached relative to them with
// no symlink followed: a leases directory replaced by a symlink, or a
// state file pointing elsewhere, cannot make tokend create, read or remove
// files outside.
type runDir struct {
	path   string
	dir    *os.File
	leases *os.File
}

// leaseIDPattern is the form of the IDs Register makes: 6 random bytes in
// hex. Only files named after it are ever removed from the leases
// directory.
var leaseIDPattern = regexp.MustCompile(`^[0-9a-f]{12}$`)

// openRunDir creates the runtime directory and its leases directory if
// need be, and refuses either when it is a symlink, is not owned by this
// process's user, or may be written by anyone else.
func openRunDir(path string) (*runDir, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create the parent of runtime directory %s: %w", path, err)
	}
	if err := unix.Mkdir(path, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create runtime directory %s: %w", path, err)
	}
	dir, err := openCheckedDir(unix.AT_FDCWD, path, path)
	if err != nil {
		return nil, err
	}
	leasesPath := filepath.Join(path, "leases")
	if err := unix.Mkdirat(int(dir.Fd()), "leases", 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		dir.Close()
		return nil, fmt.Errorf("create %s: %w", leasesPath, err)
	}
	leases, err := openCheckedDir(int(dir.Fd()), "leases", leasesPath)
	if err != nil {
		dir.Close()
		return nil, err
	}
	return &runDir{path: path, dir: dir, leases: leases}, nil
}

// openCheckedDir opens name relative to at without following a symlink
// and checks the directory it got. shown is the path for messages.
func openCheckedDir(at int, name, shown string) (*os.File, error) {
	fd, err := unix.Openat(at, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return nil, fmt.Errorf("runtime directory %s is a symlink or not a directory: remove it (tokend makes it) or choose another runtime_dir", shown)
	}
	if err != nil {
		return nil, fmt.Errorf("open runtime directory %s: %w", shown, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat runtime directory %s: %w", shown, err)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		unix.Close(fd)
		return nil, fmt.Errorf("runtime directory %s is owned by uid %d, not by tokend's uid %d: remove it (tokend makes it) or chown %d %s", shown, st.Uid, uid, uid, shown)
	}
	if perm := st.Mode & 0o7777; perm&0o022 != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("runtime directory %s may be written by others (mode %04o): chmod go-w %s, or choose another runtime_dir", shown, perm, shown)
	}
	return os.NewFile(uintptr(fd), shown), nil
}

// CheckRuntimeDir creates the runtime directory if need be and refuses it
// as New does, for what must run before the broker (the FIFO holder).
func CheckRuntimeDir(path string) error {
	r, err := openRunDir(path)
	if err != nil {
		return err
	}
	return r.close()
}

func (r *runDir) close() error {
	return errors.Join(r.leases.Close(), r.dir.Close())
}

// fifoPath is where lease id's FIFO lives.
func (r *runDir) fifoPath(id string) string { return fifoPath(r.path, id) }

// readFile reads a file of the runtime directory without following a
// symlink, at most limit bytes.
func (r *runDir) readFile(name string, limit int64) ([]byte, error) {
	fd, err := unix.Openat(int(r.dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(r.path, name), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(r.path, name))
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%v)", f.Name(), st.Mode().Type())
	}
	raw, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", f.Name(), limit)
	}
	return raw, nil
}

// setAside renames name to name.rejected-N, keeping what a bad file said
// for the operator, and returns the new path.
func (r *runDir) setAside(name string) (string, error) {
	dirfd := int(r.dir.Fd())
	for n := 1; n < 1000; n++ {
		aside := name + ".rejected-" + strconv.Itoa(n)
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, aside, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			continue
		}
		if err := unix.Renameat(dirfd, name, dirfd, aside); err != nil {
			return "", fmt.Errorf("set %s aside: %w", filepath.Join(r.path, name), err)
		}
		return filepath.Join(r.path, aside), nil
	}
	return "", fmt.Errorf("set %s aside: 999 rejected copies already; remove them", filepath.Join(r.path, name))
}

// leaseFileKinds are the files tokend keeps per lease in the leases
// directory, by suffix, and the file type each must have.
var leaseFileKinds = map[string]uint32{".fifo": unix.S_IFIFO, ".gate": unix.S_IFREG}

// staleFiles lists the entries of the leases directory named after a
// lease ID not in keep, with the type tokend gives such a file, and the
// other entries, which tokend never removes.
func (r *runDir) staleFiles(keep map[string]*Lease) (stale []string, foreign []string, err error) {
	dup, err := unix.Openat(int(r.leases.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", r.leases.Name(), err)
	}
	d := os.NewFile(uintptr(dup), r.leases.Name())
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", r.leases.Name(), err)
	}
	for _, name := range names {
		ext := filepath.Ext(name)
		kind, known := leaseFileKinds[ext]
		id := strings.TrimSuffix(name, ext)
		if !known || !leaseIDPattern.MatchString(id) {
			foreign = append(foreign, name)
			continue
		}
		if _, live := keep[id]; live {
			continue
		}
		// Nobody else may create files here, so one of tokend's names
		// and types is tokend's, whoever it gave the file to.
		var st unix.Stat_t
		if err := unix.Fstatat(int(r.leases.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != kind {
			foreign = append(foreign, name)
			continue
		}
		stale = append(stale, name)
	}
	return stale, foreign, nil
}

// removeLeaseFile unlinks a file of the leases directory by its name.
func (r *runDir) removeLeaseFile(name string) error {
	if err := unix.Unlinkat(int(r.leases.Fd()), name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", filepath.Join(r.leases.Name(), name), err)
	}
	return nil
}

// setAsideBad drops the saved leases that fail their check, logging each,
// and keeps the state file that held them aside for the operator. Their
// tokens are written off; a FIFO of theirs named like a lease is removed
// with the stale ones.
func (b *Broker) setAsideBad(saved []savedLease) []savedLease {
	var owns func(string) bool
	if b.opts.Cgroups != nil {
		owns = b.opts.Cgroups.Owns
	}
	good := saved[:0]
	bad := 0
	for _, s := range saved {
		if err := s.check(owns); err != nil {
			b.log.Error("state file entry refused; not adopting it", "lease", strconv.Quote(s.ID), "error", err)
			b.totals.reclaimed += max(min(s.Granted, jobserver.MaxTokens), 0)
			bad++
			continue
		}
		good = append(good, s)
	}
	if bad > 0 {
		b.dirty = true
		if aside, err := b.run.setAside(stateFile); err != nil {
			b.log.Error("cannot keep the refused state file aside", "error", err)
		} else {
			b.log.Warn("kept the state file with refused entries aside", "path", aside, "refused", bad)
		}
	}
	return good
}

// removeStale removes the files of the leases directory that no adopted
// lease owns. Only FIFOs and gates named like a lease are removed:
// anything else there is not tokend's, and is left alone and logged.
func (b *Broker) removeStale() error {
	stale, foreign, err := b.run.staleFiles(b.leases)
	if err != nil {
		return err
	}
	for _, name := range stale {
		if err := b.run.removeLeaseFile(name); err != nil {
			return err
		}
		b.log.Info("removed stale lease file", "path", filepath.Join(b.run.leases.Name(), name))
	}
	for _, name := range foreign {
		b.log.Warn("leaving a file tokend did not make in its leases directory", "path", filepath.Join(b.run.leases.Name(), strconv.Quote(name)))
	}
	return nil
}

// removeFiles closes the lease's FIFO and gate and unlinks them by name,
// relative to the leases directory.
func (b *Broker) removeFiles(l *Lease) {
	b.unhold(l)
	err := errors.Join(l.fifo.Close(), b.run.removeLeaseFile(l.ID+".fifo"))
	if l.gate != nil {
		err = errors.Join(err, l.gate.close(), b.run.removeLeaseFile(l.ID+".gate"))
	}
	if err != nil {
		b.log.Warn("cannot remove the lease's files", "lease", l.ID, "error", err)
	}
}
