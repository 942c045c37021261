package jobserver

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkTokenRoundTrip measures one token's trip through a real FIFO
// from Create: a Go client reading and writing it back (its implicit slot
// held, so every Acquire reads the pipe), and the server adding and taking
// it back.
func BenchmarkTokenRoundTrip(b *testing.B) {
	f, err := Create(filepath.Join(b.TempDir(), "js"), FIFOOptions{GID: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Remove()
	b.Run("client", func(b *testing.B) {
		if err := f.Add(1); err != nil {
			b.Fatal(err)
		}
		defer f.Take(1)
		c, err := Dial(FIFOAuth(f.Path()))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		implicit, err := c.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Release(implicit)
		for b.Loop() {
			s, err := c.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Release(s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("server", func(b *testing.B) {
		for b.Loop() {
			if err := f.Add(1); err != nil {
				b.Fatal(err)
			}
			if n, err := f.Take(1); n != 1 || err != nil {
				b.Fatal(n, err)
			}
		}
	})
}
