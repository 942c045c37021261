package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/tokend/tokend/jobserver"
)

// The -j and -l people type by habit are read here the way make and ninja
// read them (getopt_long with their own option tables, checked against
// make 4.4.1's src/main.c and ninja 1.13.2's src/ninja.cc), so that a -j
// is found wherever the tool itself would see it, and nothing else is.

// argKind is whether an option takes a value.
type argKind int

const (
	noArg argKind = iota
	requiredArg
	optionalArg
)

// longOption is a long option of a tool: key is the short option it
// stands for, or its own name when it has none; two names for one option
// share the key, which decides whether an abbreviation is ambiguous.
type longOption struct {
	key string
	arg argKind
}

// grammar is how one build tool reads its command line.
type grammar struct {
	tool  string
	short map[byte]argKind
	long  map[string]longOption
	// trailing tells whether make takes the argument after an optional
	// -j or -l as its value: make's decode_switches does, for all digits
	// after -j and a digit or a dot after -l.
	trailing map[byte]func(next string) bool
	// stop is the option after which the tool reads no more options
	// (ninja's -t TOOL hands the rest to the tool); 0 for none.
	stop byte
	// inOrder: the tool reads every argument before "--" as a possible
	// option, also after its first target. make asks getopt for that; for
	// ninja, glibc's getopt permutes arguments unless POSIXLY_CORRECT is set.
	inOrder bool
	// drop is why each dropped option must go, by short option.
	drop map[byte]string
}

var makeGrammar = grammar{
	tool: "make",
	short: map[byte]argKind{
		'b': noArg, 'B': noArg, 'd': noArg, 'e': noArg, 'h': noArg, 'i': noArg, 'k': noArg, 'L': noArg,
		'm': noArg, 'n': noArg, 'p': noArg, 'q': noArg, 'r': noArg, 'R': noArg, 's': noArg, 'S': noArg,
		't': noArg, 'v': noArg, 'w': noArg,
		'C': requiredArg, 'E': requiredArg, 'f': requiredArg, 'I': requiredArg, 'o': requiredArg, 'W': requiredArg,
		'j': optionalArg, 'l': optionalArg, 'O': optionalArg,
	},
	long: map[string]longOption{
		"always-make": {"B", noArg}, "environment-overrides": {"e", noArg}, "eval": {"E", requiredArg},
		"help": {"h", noArg}, "ignore-errors": {"i", noArg}, "keep-going": {"k", noArg},
		"check-symlink-times": {"L", noArg}, "just-print": {"n", noArg}, "dry-run": {"n", noArg}, "recon": {"n", noArg},
		"print-data-base": {"p", noArg}, "question": {"q", noArg}, "no-builtin-rules": {"r", noArg},
		"no-builtin-variables": {"R", noArg}, "silent": {"s", noArg}, "quiet": {"s", noArg},
		"no-keep-going": {"S", noArg}, "stop": {"S", noArg}, "touch": {"t", noArg}, "version": {"v", noArg},
		"print-directory": {"w", noArg}, "directory": {"C", requiredArg}, "file": {"f", requiredArg},
		"makefile": {"f", requiredArg}, "include-dir": {"I", requiredArg}, "jobs": {"j", optionalArg},
		"load-average": {"l", optionalArg}, "max-load": {"l", optionalArg}, "old-file": {"o", requiredArg},
		"assume-old": {"o", requiredArg}, "output-sync": {"O", optionalArg}, "what-if": {"W", requiredArg},
		"new-file": {"W", requiredArg}, "assume-new": {"W", requiredArg},
		"debug": {"debug", optionalArg}, "jobserver-auth": {"jobserver-auth", requiredArg}, "trace": {"trace", noArg},
		"no-print-directory": {"no-print-directory", noArg}, "warn-undefined-variables": {"warn-undefined-variables", noArg},
		"sync-mutex": {"sync-mutex", requiredArg}, "no-silent": {"no-silent", noArg},
		"jobserver-fds": {"jobserver-fds", requiredArg}, "temp-stdin": {"temp-stdin", requiredArg},
		"shuffle": {"shuffle", optionalArg}, "jobserver-style": {"jobserver-style", requiredArg},
	},
	trailing: map[byte]func(string) bool{
		'j': func(next string) bool { return strings.Trim(next, "0123456789") == "" },
		'l': func(next string) bool { return next != "" && (next[0] == '.' || next[0] >= '0' && next[0] <= '9') },
	},
	inOrder: true,
	drop: map[byte]string{
		'j': "-j takes make out of tokend's jobserver",
		'l': "-l keeps the tokens tokend gave make idle while the host's load is high",
	},
}

var ninjaGrammar = grammar{
	tool: "ninja",
	short: map[byte]argKind{
		'd': requiredArg, 'f': requiredArg, 'j': requiredArg, 'k': requiredArg, 'l': requiredArg,
		'n': noArg, 't': requiredArg, 'v': noArg, 'w': requiredArg, 'C': requiredArg, 'h': noArg,
	},
	long: map[string]longOption{
		"help": {"h", noArg}, "version": {"version", noArg}, "verbose": {"v", noArg}, "quiet": {"quiet", noArg},
	},
	stop:    't',
	inOrder: true, // unless POSIXLY_CORRECT is set: see forgiveJobFlags
	drop: map[byte]string{
		'j': "-j takes ninja out of tokend's jobserver",
		'l': "-l holds ninja back by the load of builds tokend's budget already counts",
	},
}

// jobFlags is what forgiveJobFlags found on a command line.
type jobFlags struct {
	argv    []string // the command line without them
	dropped []string // as they were written, such as "-j8" or "--jobs 8"
	why     []string // one reason per kind of option dropped
}

// forgiveJobFlags drops from a make or ninja command line the -j (and -l)
// that would take it out of tokend's jobserver or fight its budget. Other
// commands, and everything the tool would not read as one of those
// options, are left as they are.
func forgiveJobFlags(argv []string) jobFlags {
	var g *grammar
	switch {
	case jobserver.IsMake(argv[0]):
		g = &makeGrammar
	case jobserver.IsNinja(argv[0]):
		ninja := ninjaGrammar
		ninja.inOrder = os.Getenv("POSIXLY_CORRECT") == ""
		g = &ninja
	default:
		return jobFlags{argv: argv}
	}
	return g.forgive(argv)
}

func (g *grammar) forgive(argv []string) jobFlags {
	out := jobFlags{argv: []string{argv[0]}}
	seen := map[byte]bool{}
	drop := func(c byte, written ...string) {
		out.dropped = append(out.dropped, strings.Join(written, " "))
		if !seen[c] {
			seen[c] = true
			out.why = append(out.why, g.drop[c])
		}
	}
	i := 1
	for ; i < len(argv); i++ {
		a := argv[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			out.argv = append(out.argv, a)
			if !g.inOrder {
				i++
				break
			}
			continue
		}
		var stop bool
		if strings.HasPrefix(a, "--") {
			i, stop = g.longOption(argv, i, &out, drop)
		} else {
			i, stop = g.shortOptions(argv, i, &out, drop)
		}
		if stop {
			i++
			break
		}
	}
	out.argv = append(out.argv, argv[i:]...)
	return out
}

// longOption reads the long option at argv[i], keeping or dropping it with
// its value, and returns the index of the last argument it took.
func (g *grammar) longOption(argv []string, i int, out *jobFlags, drop func(byte, ...string)) (int, bool) {
	name, _, hasValue := strings.Cut(argv[i][2:], "=")
	opt, ok := g.lookupLong(name)
	if !ok {
		out.argv = append(out.argv, argv[i])
		return i, false // unknown or ambiguous: the tool says so
	}
	last := i
	var c byte
	if len(opt.key) == 1 {
		c = opt.key[0]
	}
	if !hasValue && i+1 < len(argv) {
		switch {
		case opt.arg == requiredArg:
			last = i + 1
		case opt.arg == optionalArg && g.trailing[c] != nil && g.trailing[c](argv[i+1]):
			last = i + 1
		}
	}
	if g.drop[c] != "" {
		drop(c, argv[i:last+1]...)
	} else {
		out.argv = append(out.argv, argv[i:last+1]...)
	}
	return last, c != 0 && c == g.stop
}

// lookupLong finds a long option by its name or an abbreviation, as
// getopt_long does: an exact name wins, else the abbreviation must name
// one option.
func (g *grammar) lookupLong(name string) (longOption, bool) {
	if opt, ok := g.long[name]; ok {
		return opt, true
	}
	var found *longOption
	for n, opt := range g.long {
		if !strings.HasPrefix(n, name) {
			continue
		}
		if found != nil && *found != opt {
			return longOption{}, false
		}
		found = &opt
	}
	if found == nil || name == "" {
		return longOption{}, false
	}
	return *found, true
}

// shortOptions reads the cluster of short options at argv[i] (such as
// -sj8), keeping the options that stay in one cluster, and returns the
// index of the last argument it took.
func (g *grammar) shortOptions(argv []string, i int, out *jobFlags, drop func(byte, ...string)) (int, bool) {
	a := argv[i]
	kept := []byte{'-'}
	last := i
	stop := false
	var trailing []string // a value in the next argument, after the kept cluster
	for j := 1; j < len(a); j++ {
		c := a[j]
		kind, ok := g.short[c]
		if !ok {
			kept = append(kept, a[j:]...) // the tool reports it
			break
		}
		if kind == noArg {
			kept = append(kept, c)
			continue
		}
		value := a[j+1:]
		written := []string{"-" + string(c) + value}
		if value == "" && i+1 < len(argv) &&
			(kind == requiredArg || g.trailing[c] != nil && g.trailing[c](argv[i+1])) {
			last = i + 1
			written = append(written, argv[i+1])
		}
		if g.drop[c] != "" {
			drop(c, written...)
		} else {
			kept = append(kept, written[0][1:]...)
			trailing = written[1:]
		}
		stop = c == g.stop
		break
	}
	if len(kept) > 1 {
		out.argv = append(out.argv, string(kept))
		out.argv = append(out.argv, trailing...)
	}
	return last, stop
}

// message is the one line tokenctl prints about what it dropped.
func (f jobFlags) message() string {
	if len(f.dropped) == 0 {
		return ""
	}
	return fmt.Sprintf("tokenctl: dropped %s from the command: %s; --keep-jobs keeps them",
		strings.Join(f.dropped, " "), strings.Join(f.why, ", "))
}
