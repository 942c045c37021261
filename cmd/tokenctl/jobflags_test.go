package main

import (
	"slices"
	"strings"
	"testing"
)

// The cases follow what make 4.4.1 and ninja 1.13.2 do with each command
// line (their option parsers, read in their sources and tried here): a -j
// the tool would read is dropped wherever it stands, a "-j" that is the
// value of another option or comes after "--" is not the tool's -j.
func TestForgiveJobFlags(t *testing.T) {
	cases := []struct {
		argv, want, dropped string
	}{
		{"make -j8", "make", "-j8"},
		{"make -j 8", "make", "-j 8"},
		{"make -j", "make", "-j"}, // unlimited jobs, and out of the jobserver: make says -j0
		{"make -j all", "make all", "-j"},
		{"make -j 8 all", "make all", "-j 8"},
		{"make all -j8", "make all", "-j8"}, // make reads options after targets too
		{"make CFLAGS=-O2 -j4 all", "make CFLAGS=-O2 all", "-j4"},
		{"make --jobs=8", "make", "--jobs=8"},
		{"make --jobs 8 install", "make install", "--jobs 8"},
		{"make --jobs", "make", "--jobs"},
		{"make --jobs=", "make", "--jobs="},
		{"make --job=8", "make --job=8", ""}, // ambiguous with --jobserver-auth: make stops on it
		{"make -sj8", "make -s", "-j8"},
		{"make -kj 8 -s", "make -k -s", "-j 8"},
		{"make -skj", "make -sk", "-j"},
		{"make -C dir -j4", "make -C dir", "-j4"},
		{"make -Cj4", "make -Cj4", ""},     // the directory j4
		{"make -f -j8", "make -f -j8", ""}, // the makefile -j8
		{"make -C -j8 -j2", "make -C -j8", "-j2"},
		{"make --directory -j8", "make --directory -j8", ""},
		{"make -O -j2", "make -O", "-j2"}, // -O's value is optional and never the next argument
		{"make -- -j8", "make -- -j8", ""},
		{"make -l", "make", "-l"},
		{"make -l4 -j4", "make", "-l4 -j4"},
		{"make -l 4.5 all", "make all", "-l 4.5"},
		{"make -l .5", "make", "-l .5"},
		{"make -l all", "make all", "-l"},
		{"make --load-average=3", "make", "--load-average=3"},
		{"make --max-load 3", "make", "--max-load 3"},
		{"make --lo=3", "make", "--lo=3"},
		{"make --max 3 x", "make x", "--max 3"},
		{"make -k", "make -k", ""},
		{"gmake -j4", "gmake", "-j4"},
		{"make-4.3 -j4 all", "make-4.3 all", "-j4"},
		{"ninja -j8", "ninja", "-j8"},
		{"ninja -j 8 -C build", "ninja -C build", "-j 8"},
		{"ninja -j0", "ninja", "-j0"},
		{"ninja -C build -l 4 all", "ninja -C build all", "-l 4"},
		{"ninja all -j8", "ninja all", "-j8"}, // glibc's getopt permutes
		{"ninja -vj8", "ninja -v", "-j8"},
		{"ninja -k 0 -j2", "ninja -k 0", "-j2"},
		{"ninja -t clean -j8", "ninja -t clean -j8", ""}, // the tool's arguments
		{"ninja -tclean -j8", "ninja -tclean -j8", ""},
		{"ninja -f -j8", "ninja -f -j8", ""},
		{"ninja -- -j8", "ninja -- -j8", ""},
		{"ninja-build -j8", "ninja-build", "-j8"},
		{"cargo build -j8", "cargo build -j8", ""},
		{"sh -c make -j8", "sh -c make -j8", ""},
	}
	for _, c := range cases {
		got := forgiveJobFlags(strings.Fields(c.argv))
		if !slices.Equal(got.argv, strings.Fields(c.want)) || strings.Join(got.dropped, " ") != c.dropped {
			t.Errorf("%s: runs %q and drops %q; want %q and %q", c.argv, got.argv, got.dropped, c.want, c.dropped)
		}
		if (c.dropped == "") != (got.message() == "") {
			t.Errorf("%s: message %q", c.argv, got.message())
		}
	}
}

// With POSIXLY_CORRECT, glibc's getopt stops at ninja's first target;
// make asks for its arguments in order and reads on.
func TestForgiveJobFlagsPosixlyCorrect(t *testing.T) {
	t.Setenv("POSIXLY_CORRECT", "1")
	for argv, want := range map[string]string{
		"ninja all -j8":     "ninja all -j8",
		"ninja -j8 all -j2": "ninja all -j2",
		"make all -j8":      "make all",
	} {
		if got := forgiveJobFlags(strings.Fields(argv)).argv; !slices.Equal(got, strings.Fields(want)) {
			t.Errorf("%s: runs %q, want %q", argv, got, want)
		}
	}
}

func TestJobFlagsMessage(t *testing.T) {
	got := forgiveJobFlags([]string{"make", "-j8", "-l", "4"}).message()
	want := "tokenctl: dropped -j8 -l 4 from the command: -j takes make out of tokend's jobserver, " +
		"-l keeps the tokens tokend gave make idle while the host's load is high; --keep-jobs keeps them"
	if got != want {
		t.Errorf("message:\n%s\nwant\n%s", got, want)
	}
}
