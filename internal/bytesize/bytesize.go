// Package bytesize reads and writes sizes in bytes: exactly, as the
// configuration gives them ("512MiB", "1.5GiB", "4096"), and rounded, for
// people ("640MiB", "12.5GiB").
package bytesize

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes, written as a string with an optional unit:
// "512MiB", "1.5GiB", "4096". Units are KiB, MiB, GiB, TiB (powers of
// 1024), K, M, G, T as their shorthands, and B.
type Size uint64

var units = []struct {
	suffix string
	scale  float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// UnmarshalText parses a size such as "512MiB". NaN, infinities and
// negative sizes are refused.
func (s *Size) UnmarshalText(text []byte) error {
	num := strings.TrimSpace(string(text))
	scale := 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, scale = strings.TrimSpace(n), u.scale
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v*scale >= 1<<63 {
		return fmt.Errorf("size %q: want a number of bytes with an optional unit, such as 512MiB or 1.5GiB", text)
	}
	*s = Size(v * scale)
	return nil
}

// String writes the size in the largest unit it is a whole multiple of,
// so that it reads back as the same size.
func (s Size) String() string {
	for i := 3; i >= 0; i-- {
		if unit := uint64(units[i].scale); s != 0 && uint64(s)%unit == 0 {
			return strconv.FormatUint(uint64(s)/unit, 10) + units[i].suffix
		}
	}
	return strconv.FormatUint(uint64(s), 10)
}

// Set makes Size a flag.Value.
func (s *Size) Set(text string) error { return s.UnmarshalText([]byte(text)) }

// Human writes b for people: whole MiB below 10 GiB, GiB with one decimal
// from there.
func Human(b uint64) string {
	if b >= 10<<30 {
		return fmt.Sprintf("%.1fGiB", float64(b)/(1<<30))
	}
	return fmt.Sprintf("%dMiB", b>>20)
}
