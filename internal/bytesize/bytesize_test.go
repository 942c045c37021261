package bytesize

import "testing"

func TestParse(t *testing.T) {
	for text, want := range map[string]Size{
		"4096": 4096, "512MiB": 512 << 20, "1.5GiB": 1536 << 20, "2 G": 2 << 30, "64K": 64 << 10, "10B": 10,
	} {
		var s Size
		if err := s.Set(text); err != nil || s != want {
			t.Errorf("%q: %d, %v; want %d", text, s, err, want)
		}
		var back Size
		if err := back.Set(s.String()); err != nil || back != s {
			t.Errorf("%q: written as %q, which reads back as %d, %v", text, s.String(), back, err)
		}
	}
	for _, text := range []string{"", "lots", "-1MiB", "NaN", "NaNGiB", "Inf", "+InfMiB", "-Inf", "16EiB", "9000000TiB"} {
		var s Size
		if err := s.Set(text); err == nil {
			t.Errorf("%q: read as %d, want an error", text, s)
		}
	}
}

func TestHuman(t *testing.T) {
	for b, want := range map[uint64]string{0: "0MiB", 640 << 20: "640MiB", 10<<30 - 1: "10239MiB", 10 << 30: "10.0GiB", 25 << 29: "12.5GiB"} {
		if got := Human(b); got != want {
			t.Errorf("Human(%d) = %q, want %q", b, got, want)
		}
	}
}

// FuzzSize: any text either parses to a size that String writes back as
// the same size, or is refused; NaN and infinities are refused.
func FuzzSize(f *testing.F) {
	for _, s := range []string{"512MiB", "1.5GiB", "4096", "NaN", "+Inf", "-1K", "1e30T", " 2 G ", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		var s Size
		if err := s.UnmarshalText([]byte(text)); err != nil {
			return
		}
		var back Size
		if err := back.UnmarshalText([]byte(s.String())); err != nil || back != s {
			t.Fatalf("%q read as %d, written %q, read back %d (%v)", text, uint64(s), s.String(), uint64(back), err)
		}
	})
}
