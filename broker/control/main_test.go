package control

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tokend/tokend/internal/cgtest"
)

func TestMain(m *testing.M) {
	if os.Getenv("TOKEND_CONTROL_TEST_CHILD") == "register" {
		registerChild()
		return
	}
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// bins are tokend, tokenctl and fakecc, built once per test binary
// without the race detector: they are the programs under test and the
// stand-in compiler, not this test.
var bins struct {
	once                     sync.Once
	dir                      string
	tokend, tokenctl, fakecc string
	err                      error
}

func buildBins(t *testing.T) {
	t.Helper()
	bins.once.Do(func() {
		if bins.dir, bins.err = os.MkdirTemp("", "tokend-control-bins-"); bins.err != nil {
			return
		}
		// Tests run tokenctl as other users too.
		if bins.err = os.Chmod(bins.dir, 0o755); bins.err != nil {
			return
		}
		root := filepath.Join("..", "..")
		for _, b := range []struct {
			pkg string
			out *string
		}{{"./cmd/tokend", &bins.tokend}, {"./cmd/tokenctl", &bins.tokenctl}, {"./internal/fakecc", &bins.fakecc}} {
			if *b.out, bins.err = cgtest.BuildGo(root, b.pkg, bins.dir); bins.err != nil {
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}
