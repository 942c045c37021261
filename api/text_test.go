package api

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"llvm":                  "llvm",
		"größe 2":               "größe 2",
		"ok\x1b[2K\rforged 0 0": `"ok\x1b[2K\rforged 0 0"`,
		"a\tb":                  `"a\tb"`,
		"line\nbreak":           `"line\nbreak"`,
		"\xff":                  `"\xff"`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %s, want %s", in, got, want)
		}
	}
}
