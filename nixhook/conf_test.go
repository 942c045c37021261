package nixhook

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadNixConfExtra(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nix.conf")
	os.WriteFile(path, []byte("extra-sandbox-paths = /a\nsandbox-paths = /b\nextra-sandbox-paths = /c /d\nauto-allocate-uids = true\n"), 0o644)
	s := Conf{}
	if err := s.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if s["sandbox-paths"] != "/b /c /d" || s["auto-allocate-uids"] != "true" {
		t.Fatalf("settings %q", s)
	}
}
