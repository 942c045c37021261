package jobserver

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
)

var makeVersion = regexp.MustCompile(`GNU Make (\d+)\.(\d+)`)

// StyleFor is the style a client that will run command can read: the
// descriptor style for a GNU make older than 4.4, which stops on a fifo:
// auth, and the fifo style for everything else (ninja reads nothing
// else). It runs `command --version` when command is a make; a command
// that cannot be run gets the fifo style, and running it reports why.
func StyleFor(command string) Style {
	if !IsMake(command) {
		return StyleFIFO
	}
	out, err := exec.Command(command, "--version").Output()
	if err != nil {
		return StyleFIFO
	}
	m := makeVersion.FindStringSubmatch(string(out))
	if m == nil {
		return StyleFIFO
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 4 || (major == 4 && minor < 4) {
		return StylePipe
	}
	return StyleFIFO
}

// makeName matches the names GNU make is installed under: make, gmake and
// versioned names such as make-4.3; ninjaName ninja and Fedora's ninja-build.
var (
	makeName  = regexp.MustCompile(`^g?make(-?[0-9][0-9.]*)?$`)
	ninjaName = regexp.MustCompile(`^ninja(-build)?$`)
)

// IsMake tells whether command is GNU make by its name, or by the name of
// the file its symlinks lead to (make-4.3 -> /usr/bin/make).
func IsMake(command string) bool { return namedLike(command, makeName) }

// IsNinja tells whether command is ninja, the same way.
func IsNinja(command string) bool { return namedLike(command, ninjaName) }

func namedLike(command string, name *regexp.Regexp) bool {
	if name.MatchString(filepath.Base(command)) {
		return true
	}
	path, err := exec.LookPath(command)
	if err != nil {
		return false
	}
	real, err := filepath.EvalSymlinks(path)
	return err == nil && name.MatchString(filepath.Base(real))
}
