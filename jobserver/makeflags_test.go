package jobserver

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseMakeflags(t *testing.T) {
	fifo := func(p string) *Auth { a := FIFOAuth(p); return &a }
	pipe := func(r, w int) *Auth { a := PipeAuth(r, w); return &a }
	for _, c := range []struct {
		in   string
		want Makeflags
	}{
		{"", Makeflags{}},
		{"   ", Makeflags{}},
		// What make writes (make 4.4.1 and 4.3 on this machine).
		{" -j3 --jobserver-auth=fifo:/tmp/GMfifo10246", Makeflags{Auth: fifo("/tmp/GMfifo10246"), Jobs: 3}},
		{" -j3 --jobserver-auth=3,4", Makeflags{Auth: pipe(3, 4), Jobs: 3}},
		{"ks -j3 --jobserver-auth=fifo:/tmp/GMfifo1 -- FOO=a\\ b", Makeflags{Auth: fifo("/tmp/GMfifo1"), Jobs: 3}},
		{"np", Makeflags{DryRun: true}},
		{"kns -j2 --jobserver-auth=fifo:/x", Makeflags{Auth: fifo("/x"), Jobs: 2, DryRun: true}},
		// make 4.4 in pipe style withholds the jobserver from recipe lines
		// not marked '+' by appending -2,-2; the last one wins.
		{" -j3 --jobserver-auth=3,4 --jobserver-auth=-2,-2", Makeflags{Auth: pipe(-2, -2), Jobs: 3}},
		// make <= 4.1, and jobserver-rs, which writes both.
		{"--jobserver-fds=5,6", Makeflags{Auth: pipe(5, 6)}},
		{"-j --jobserver-fds=5,6 --jobserver-auth=5,6", Makeflags{Auth: pipe(5, 6), Jobs: -1}},
		// Last one wins, across forms.
		{"--jobserver-auth=3,4 --jobserver-fds=7,8 --jobserver-auth=fifo:/b", Makeflags{Auth: fifo("/b")}},
		{"--jobserver-auth=fifo:/a --jobserver-auth=3,4", Makeflags{Auth: pipe(3, 4)}},
		// -j in every spelling.
		{"-j", Makeflags{Jobs: -1}},
		{"-j8", Makeflags{Jobs: 8}},
		{"-j 8", Makeflags{Jobs: 8}},
		{"--jobs=5", Makeflags{Jobs: 5}},
		{"--jobs 6", Makeflags{Jobs: 6}},
		{"--jobs", Makeflags{Jobs: -1}},
		{"-j --jobserver-auth=fifo:/f", Makeflags{Auth: fifo("/f"), Jobs: -1}},
		{"-j4 -j2", Makeflags{Jobs: 2}},
		// n: in the first word (make's single-letter flags, no dash), or -n.
		{"n", Makeflags{DryRun: true}},
		{"ksn --jobserver-auth=fifo:/f", Makeflags{Auth: fifo("/f"), DryRun: true}},
		{"ks --jobserver-auth=fifo:/f", Makeflags{Auth: fifo("/f")}},
		{"-n --jobserver-auth=fifo:/f", Makeflags{Auth: fifo("/f"), DryRun: true}},
		{"-kn", Makeflags{DryRun: true}},
		{" -j2 n", Makeflags{Jobs: 2}}, // n not in the first word, nor a flag
		{"--no-print-directory", Makeflags{}},
		{"-one-flag --jobserver-auth=fifo:/f", Makeflags{Auth: fifo("/f")}},
		// Escaped white space in a path.
		{`--jobserver-auth=fifo:/tmp/a\ b/c\\d`, Makeflags{Auth: fifo(`/tmp/a b/c\d`)}},
		{"--jobserver-auth=fifo:/tmp/a\\\tb", Makeflags{Auth: fifo("/tmp/a\tb")}},
		// Nothing after -- is a flag.
		{"-j2 -- --jobserver-auth=fifo:/v -j9 n", Makeflags{Jobs: 2}},
		{"-- X=1", Makeflags{}},
		{"k -- --jobserver-auth=bad", Makeflags{}},
	} {
		got, err := ParseMakeflags(c.in)
		if err != nil {
			t.Errorf("ParseMakeflags(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseMakeflags(%q) = %s, want %s", c.in, show(got), show(c.want))
		}
	}
}

func show(m Makeflags) string {
	a := "nil"
	if m.Auth != nil {
		a = m.Auth.Flag()
	}
	return fmt.Sprintf("{Auth:%s Jobs:%d DryRun:%v}", a, m.Jobs, m.DryRun)
}

func TestParseMakeflagsErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"--jobserver-auth=", "want fifo:PATH or R,W"},
		{"--jobserver-auth=fifo:", "empty fifo path"},
		{"--jobserver-auth=3", "want fifo:PATH or R,W"},
		{"--jobserver-auth=3,", "want fifo:PATH or R,W"},
		{"--jobserver-auth=a,b", "want fifo:PATH or R,W"},
		{"--jobserver-auth=semaphore_name", "want fifo:PATH or R,W"},
		{"--jobserver-fds=10,", "want fifo:PATH or R,W"},
		{"-jx", `"-jx" is not a job count`},
		{"--jobs=x", `"--jobs=x" is not a job count`},
	} {
		_, err := ParseMakeflags(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "MAKEFLAGS") {
			t.Errorf("ParseMakeflags(%q) error = %v, want one mentioning MAKEFLAGS and %q", c.in, err, c.want)
		}
	}
}

func TestWithAuth(t *testing.T) {
	f := FIFOAuth("/run/tokend/b1")
	for _, c := range []struct {
		in   string
		a    Auth
		want string
	}{
		{"", f, "--jobserver-auth=fifo:/run/tokend/b1"},
		{" -j3 --jobserver-auth=fifo:/tmp/GMfifo1", f, "--jobserver-auth=fifo:/run/tokend/b1"},
		{"ks -j3 --jobserver-auth=3,4 -- FOO=a\\ b", f, "ks --jobserver-auth=fifo:/run/tokend/b1 -- FOO=a\\ b"},
		{"-j 4 --jobs=2 --jobs 5 -j -k --jobserver-style=fifo --jobserver-fds=1,2", f, "-k --jobserver-auth=fifo:/run/tokend/b1"},
		{"-j --no-print-directory", PipeAuth(3, 4), "--no-print-directory --jobserver-auth=3,4"},
		{"n -- X=1 Y=-j2", FIFOAuth("/a b"), `n --jobserver-auth=fifo:/a\ b -- X=1 Y=-j2`},
		{"-- --jobserver-auth=fifo:/old", f, "--jobserver-auth=fifo:/run/tokend/b1 -- --jobserver-auth=fifo:/old"},
		{`-I/a\ dir -Otarget`, f, `-I/a\ dir -Otarget --jobserver-auth=fifo:/run/tokend/b1`},
	} {
		got := WithAuth(c.in, c.a)
		if got != c.want {
			t.Errorf("WithAuth(%q, %s) = %q, want %q", c.in, c.a.Flag(), got, c.want)
		}
		m, err := ParseMakeflags(got)
		if err != nil || m.Auth == nil || *m.Auth != c.a || m.Jobs != 0 {
			t.Errorf("ParseMakeflags(WithAuth(%q)) = %s, %v", c.in, show(m), err)
		}
	}
}

func TestStyle(t *testing.T) {
	for _, s := range []Style{StyleFIFO, StylePipe} {
		got, err := ParseStyle(s.String())
		if err != nil || got != s {
			t.Errorf("ParseStyle(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseStyle("sem"); err == nil || !strings.Contains(err.Error(), "want fifo") {
		t.Errorf("ParseStyle(sem) error = %v", err)
	}
	if s := Style(7).String(); s != "style(7)" {
		t.Errorf("Style(7) = %q", s)
	}
}

// FuzzWithAuth checks that parsing never panics and that WithAuth always
// yields MAKEFLAGS naming exactly the jobserver given, with no -j, keeping
// the variable overrides after -- as they were.
func FuzzWithAuth(f *testing.F) {
	for _, s := range []string{
		"", " -j3 --jobserver-auth=fifo:/tmp/GMfifo1", "ks -j3 --jobserver-auth=3,4 -- FOO=a\\ b",
		"-j --jobserver-fds=5,6 --jobserver-auth=5,6", "np", "-j 8 --jobs=2 --jobs", "-- X=1",
		`--jobserver-auth=fifo:/a\ b\\`, "\\", "-j4 n", "--jobserver-auth=-2,-2", "\t\n-k\\\n",
	} {
		f.Add(s, "/run/tokend/fifo", 3, 4, true)
		f.Add(s, `/a b\c	d`, 0, 1, false)
	}
	f.Fuzz(func(t *testing.T, makeflags, path string, r, w int, isFIFO bool) {
		ParseMakeflags(makeflags) // must not panic
		a := PipeAuth(r, w)
		if isFIFO {
			if path == "" {
				path = "/x"
			}
			a = FIFOAuth(path)
		}
		out := WithAuth(makeflags, a)
		m, err := ParseMakeflags(out)
		if err != nil {
			t.Fatalf("ParseMakeflags(WithAuth(%q)) = %q: %v", makeflags, out, err)
		}
		if m.Auth == nil || *m.Auth != a {
			t.Fatalf("WithAuth(%q, %+v) = %q parses to auth %+v", makeflags, a, out, m.Auth)
		}
		if m.Jobs != 0 {
			t.Fatalf("WithAuth(%q) = %q keeps a -j", makeflags, out)
		}
		if got, want := afterDashes(split(out)), afterDashes(split(makeflags)); !reflect.DeepEqual(got, want) {
			t.Fatalf("WithAuth(%q) = %q: overrides %q, want %q", makeflags, out, got, want)
		}
	})
}

func afterDashes(words []string) []string {
	for i, w := range words {
		if w == "--" {
			return words[i:]
		}
	}
	return nil
}
