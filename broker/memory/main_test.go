package memory

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// thrashEnv makes the test binary a workload instead of running tests:
// "FILE:ANON_MIB" holds ANON_MIB of anonymous memory and reads random pages
// of FILE forever. In a memcg too small for both, the file's pages are
// evicted and faulted back in again and again: the file-backed thrash that
// produces real memory pressure without swap.
const thrashEnv = "TOKEND_MEMORY_TEST_THRASH"

// allocEnv makes the test binary touch "MIB" of anonymous memory at once
// and exit: in a smaller memcg, the OOM killer's victim.
const allocEnv = "TOKEND_MEMORY_TEST_ALLOC"

func TestMain(m *testing.M) {
	if spec := os.Getenv(thrashEnv); spec != "" {
		if err := thrash(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if spec := os.Getenv(allocEnv); spec != "" {
		if err := alloc(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func alloc(spec string) error {
	n, err := strconv.Atoi(spec)
	if err != nil {
		return err
	}
	_, err = touchAnon(n)
	return err
}

// touchAnon maps n MiB of anonymous memory and touches every page of it.
// The mapping lives outside the Go heap, so that under -race the race
// detector keeps no shadow memory for it to inflate the memcg.
func touchAnon(n int) ([]byte, error) {
	anon, err := unix.Mmap(-1, 0, n<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(anon); i += os.Getpagesize() {
		anon[i] = 1
	}
	return anon, nil
}

func thrash(spec string) error {
	file, anonMiB, _ := strings.Cut(spec, ":")
	n, err := strconv.Atoi(anonMiB)
	if err != nil {
		return err
	}
	anon, err := touchAnon(n)
	if err != nil {
		return err
	}
	page := os.Getpagesize()
	// The file's mapping too lives outside the Go heap.
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	pages := len(m) / page
	var sum byte
	for {
		sum += m[rand.IntN(pages)*page]
		anon[rand.IntN(len(anon))] = sum
	}
}

// fixture is a path in testdata/memory.
func fixture(parts ...string) string {
	return filepath.Join(append([]string{"..", "..", "testdata", "memory"}, parts...)...)
}

// tree samples root and its descendants from a Forest read now.
func tree(t testing.TB, s Sampler, root int) ([]Proc, error) {
	t.Helper()
	f, err := s.Forest()
	if err != nil {
		return nil, err
	}
	return f.Tree(root)
}
