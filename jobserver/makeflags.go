package jobserver

import (
	"fmt"
	"strconv"
	"strings"
)

// Style is how a MAKEFLAGS string names a jobserver.
type Style int

const (
	// StyleFIFO is `--jobserver-auth=fifo:PATH`, written by make >= 4.4 and
	// read by make >= 4.4, ninja >= 1.13, cargo >= 1.69 and gcc >= 13.
	StyleFIFO Style = iota + 1
	// StylePipe is `--jobserver-auth=R,W` (or make <= 4.1's
	// `--jobserver-fds=R,W`): descriptors inherited from the parent. The
	// only style make 4.3 and gcc 12 read; ninja ignores it.
	StylePipe
)

func (s Style) String() string {
	switch s {
	case StyleFIFO:
		return "fifo"
	case StylePipe:
		return "pipe"
	}
	return "style(" + strconv.Itoa(int(s)) + ")"
}

// ParseStyle reads "fifo" or "pipe".
func ParseStyle(s string) (Style, error) {
	switch s {
	case "fifo":
		return StyleFIFO, nil
	case "pipe":
		return StylePipe, nil
	}
	return 0, fmt.Errorf("jobserver style %q: want fifo (make >= 4.4, ninja, cargo) or pipe (make 4.3, gcc 12)", s)
}

// Auth names a jobserver: a FIFO path, or a pair of inherited descriptors.
type Auth struct {
	Style Style
	Path  string // StyleFIFO
	R, W  int    // StylePipe
}

// FIFOAuth names the FIFO at path.
func FIFOAuth(path string) Auth { return Auth{Style: StyleFIFO, Path: path} }

// PipeAuth names the descriptors r and w.
func PipeAuth(r, w int) Auth { return Auth{Style: StylePipe, R: r, W: w} }

// Flag is the MAKEFLAGS option for a.
func (a Auth) Flag() string {
	if a.Style == StyleFIFO {
		return "--jobserver-auth=fifo:" + escape(a.Path)
	}
	return fmt.Sprintf("--jobserver-auth=%d,%d", a.R, a.W)
}

func parseAuth(v string) (Auth, error) {
	if path, ok := strings.CutPrefix(v, "fifo:"); ok {
		if path == "" {
			return Auth{}, fmt.Errorf("jobserver auth %q: empty fifo path", v)
		}
		return FIFOAuth(path), nil
	}
	rs, ws, ok := strings.Cut(v, ",")
	r, rerr := strconv.Atoi(rs)
	w, werr := strconv.Atoi(ws)
	if !ok || rerr != nil || werr != nil {
		return Auth{}, fmt.Errorf("jobserver auth %q: want fifo:PATH or R,W with two descriptor numbers", v)
	}
	// Negative descriptors are not an error here: make 4.4 in pipe style
	// appends --jobserver-auth=-2,-2 to the MAKEFLAGS of recipe lines not
	// marked '+', to say the jobserver is withheld. Dial explains that.
	return PipeAuth(r, w), nil
}

// Makeflags is what a jobserver client learns from a MAKEFLAGS string.
type Makeflags struct {
	// Auth is the jobserver named by the last --jobserver-auth or
	// --jobserver-fds option, the one every client uses; nil if none.
	Auth *Auth
	// Jobs is the -j value, 0 if there was none and -1 for a bare -j
	// (unlimited). Clients follow the jobserver whatever -j MAKEFLAGS
	// holds; a -j on a client's own command line is what opts it out.
	Jobs int
	// DryRun is set by n in the single-letter flags: ninja then does not
	// join a jobserver.
	DryRun bool
}

// ParseMakeflags reads a MAKEFLAGS (or MFLAGS, CARGO_MAKEFLAGS) value.
func ParseMakeflags(s string) (Makeflags, error) {
	var m Makeflags
	words := split(s)
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "--":
			return m, nil
		case i == 0 && w != "" && w[0] != '-' && isShortFlags(w):
			// make puts its single-letter flags, without a dash, first.
			m.DryRun = strings.ContainsRune(w, 'n')
		case strings.HasPrefix(w, "--jobserver-auth=") || strings.HasPrefix(w, "--jobserver-fds="):
			_, v, _ := strings.Cut(w, "=")
			a, err := parseAuth(v)
			if err != nil {
				return m, fmt.Errorf("parse MAKEFLAGS: %w", err)
			}
			m.Auth = &a
		case w == "-j" || w == "--jobs":
			m.Jobs = -1
			if i+1 < len(words) {
				if n, err := strconv.Atoi(words[i+1]); err == nil {
					m.Jobs = n
					i++
				}
			}
		case strings.HasPrefix(w, "--jobs="):
			n, err := strconv.Atoi(strings.TrimPrefix(w, "--jobs="))
			if err != nil {
				return m, fmt.Errorf("parse MAKEFLAGS: %q is not a job count", w)
			}
			m.Jobs = n
		case strings.HasPrefix(w, "-j"):
			n, err := strconv.Atoi(w[2:])
			if err != nil {
				return m, fmt.Errorf("parse MAKEFLAGS: %q is not a job count", w)
			}
			m.Jobs = n
		case len(w) > 1 && w[0] == '-' && w[1] != '-' && isShortFlags(w[1:]):
			m.DryRun = m.DryRun || strings.ContainsRune(w, 'n')
		}
	}
	return m, nil
}

// isShortFlags reports whether s is a run of make's argument-less
// single-letter options, such as "ns" in "-ns".
func isShortFlags(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("BdeiknpqrRsStwL", c) {
			return false
		}
	}
	return true
}

// WithAuth returns makeflags pointing at a instead of any jobserver it named
// before. It drops every -j (clients follow the jobserver whatever -j
// MAKEFLAGS holds, so a count there only misleads whoever reads it), and
// keeps the user's other flags and variable overrides as they were. A -j on
// a client's own command line, not in MAKEFLAGS, is what takes make and
// ninja out of the jobserver.
func WithAuth(makeflags string, a Auth) string {
	words := split(makeflags)
	var kept, vars []string
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "--":
			vars = words[i:]
			i = len(words)
		case strings.HasPrefix(w, "--jobserver-auth=") || strings.HasPrefix(w, "--jobserver-fds=") || strings.HasPrefix(w, "--jobserver-style="):
		case w == "-j" || w == "--jobs":
			if i+1 < len(words) {
				if _, err := strconv.Atoi(words[i+1]); err == nil {
					i++
				}
			}
		case strings.HasPrefix(w, "-j") || strings.HasPrefix(w, "--jobs="):
		default:
			kept = append(kept, escape(w))
		}
	}
	kept = append(kept, a.Flag())
	for _, v := range vars {
		kept = append(kept, escape(v))
	}
	return strings.Join(kept, " ")
}

// split cuts a MAKEFLAGS value into words the way make does: at unescaped
// white space, with a backslash protecting the character after it.
func split(s string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func escape(w string) string {
	if !strings.ContainsAny(w, " \t\n\\") {
		return w
	}
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		if c := w[i]; c == ' ' || c == '\t' || c == '\n' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(w[i])
	}
	return b.String()
}
