package broker

import (
	"slices"
	"testing"
)

func TestShares(t *testing.T) {
	tests := []struct {
		name      string
		allowance int
		leases    []usage
		want      []int
	}{
		{
			name:      "a lone hungry lease gets everything",
			allowance: 7,
			leases:    []usage{{hungry: true}},
			want:      []int{7},
		},
		{
			name:      "nothing moves when nobody is hungry and the allowance covers all",
			allowance: 7,
			leases:    []usage{{granted: 3, free: 3, idle: 3}, {granted: 2, free: 1, idle: 1}},
			want:      []int{3, 2},
		},
		{
			name:      "hungry leases converge to equal shares",
			allowance: 6,
			leases:    []usage{{granted: 6, hungry: true}, {hungry: true}, {hungry: true}},
			want:      []int{2, 2, 2},
		},
		{
			name:      "the remainder goes to the lease already holding more",
			allowance: 5,
			leases:    []usage{{granted: 1, hungry: true}, {granted: 4, hungry: true}},
			want:      []int{2, 3},
		},
		{
			name:      "idle tokens go to a hungry lease",
			allowance: 6,
			leases:    []usage{{granted: 6, free: 4, idle: 4}, {hungry: true}},
			want:      []int{2, 4},
		},
		{
			name:      "a busy lease shares with a newcomer",
			allowance: 6,
			leases:    []usage{{granted: 6, free: 1, idle: 1}, {hungry: true}},
			want:      []int{3, 3},
		},
		{
			name:      "tokens free for one pass only are not idle",
			allowance: 6,
			leases:    []usage{{granted: 3, free: 2, idle: 0}, {granted: 3, hungry: true}},
			want:      []int{3, 3},
		},
		{
			name:      "tokens free for two passes are idle",
			allowance: 6,
			leases:    []usage{{granted: 3, free: 2, idle: 2}, {granted: 3, hungry: true}},
			want:      []int{1, 5},
		},
		{
			name:      "an idle lease keeps one token",
			allowance: 6,
			leases:    []usage{{granted: 6, free: 6, idle: 6}, {hungry: true}},
			want:      []int{1, 5},
		},
		{
			name:      "a shrunk allowance is shared by what leases hold",
			allowance: 2,
			leases:    []usage{{granted: 4, free: 0, hungry: true}, {granted: 4, free: 2, idle: 2}},
			want:      []int{1, 1},
		},
		{
			name:      "ending leases get nothing and their share is freed",
			allowance: 4,
			leases:    []usage{{granted: 4, ending: true}, {hungry: true}},
			want:      []int{0, 4},
		},
		{
			name:      "a hungry lease served first gets what the allowance has",
			allowance: 4,
			leases:    []usage{{granted: 2, hungry: true}, {granted: 2, hungry: true, first: true}},
			want:      []int{0, 4},
		},
		{
			name:      "a lease served first asks only for what it uses; the rest is shared",
			allowance: 6,
			leases:    []usage{{granted: 2, free: 1, idle: 1, first: true}, {hungry: true}, {hungry: true}},
			want:      []int{1, 2, 3},
		},
		{
			name:      "an ending lease served first still gets nothing",
			allowance: 4,
			leases:    []usage{{granted: 2, ending: true, first: true}, {hungry: true}},
			want:      []int{0, 4},
		},
		{
			name:      "zero allowance gives nothing",
			allowance: 0,
			leases:    []usage{{granted: 2, hungry: true}, {hungry: true}},
			want:      []int{0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shares(tt.allowance, tt.leases)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("shares(%d, %+v) = %v, want %v", tt.allowance, tt.leases, got, tt.want)
			}
		})
	}
}

// FuzzShares checks the properties every distribution must keep: no
// negative share, nothing for ending leases, the whole allowance for a
// hungry lease served first, and when anything moves, no more than the
// allowance in total.
func FuzzShares(f *testing.F) {
	f.Add(6, uint64(0x0102030405))
	f.Add(0, uint64(0xffff))
	f.Add(65535, uint64(1))
	f.Fuzz(func(t *testing.T, allowance int, seed uint64) {
		if allowance < 0 || allowance > 65535 {
			return
		}
		n := int(seed%7) + 1
		leases := make([]usage, n)
		unchanged := true
		total := 0
		for i := range leases {
			s := seed >> (8 * (i % 8))
			g := int(s % 9)
			free := int((s >> 4) % uint64(g+1))
			leases[i] = usage{granted: g, free: free, idle: free / 2, hungry: free == 0, ending: s&0x80 != 0,
				first: i == int(seed>>59)%n}
			total += g
			if leases[i].ending || leases[i].hungry {
				unchanged = false
			}
		}
		got := shares(allowance, leases)
		sum := 0
		for i, g := range got {
			if g < 0 {
				t.Fatalf("negative share %d for %+v", g, leases[i])
			}
			if leases[i].ending && g != 0 {
				t.Fatalf("ending lease got %d", g)
			}
			if u := leases[i]; u.first && u.hungry && !u.ending && g != allowance {
				t.Fatalf("hungry lease served first got %d of an allowance of %d: %+v", g, allowance, leases)
			}
			sum += g
		}
		if (!unchanged || total > allowance) && sum > allowance {
			t.Fatalf("shares %v sum %d over allowance %d for %+v", got, sum, allowance, leases)
		}
	})
}

func TestOverShare(t *testing.T) {
	tests := []struct {
		name   string
		leases []usage
		target []int
		want   []bool
	}{
		{
			name:   "a lone lease holding everything is not over its share",
			leases: []usage{{granted: 5, hungry: true}},
			target: []int{5},
			want:   []bool{false},
		},
		{
			name:   "a lease above its share while a newcomer waits for admission",
			leases: []usage{{granted: 5, hungry: true}, {waiting: true, hungry: true}},
			target: []int{2, 2},
			want:   []bool{true, false},
		},
		{
			name:   "a lease above its share while an admitted one is hungry below its own",
			leases: []usage{{granted: 4, hungry: true}, {granted: 1, hungry: true}},
			target: []int{2, 2},
			want:   []bool{true, false},
		},
		{
			name:   "above its share, but nobody below theirs wants more",
			leases: []usage{{granted: 4, hungry: true}, {granted: 1, free: 1, idle: 1}},
			target: []int{2, 2},
			want:   []bool{false, false},
		},
		{
			name:   "an ending lease is going away, not hoarding, and waits for nothing",
			leases: []usage{{granted: 3, ending: true}, {waiting: true, hungry: true, ending: true}, {granted: 3, hungry: true}},
			target: []int{0, 0, 3},
			want:   []bool{false, false, false},
		},
		{
			name:   "a nix build that has not asked holds no slot and waits for nothing",
			leases: []usage{{granted: 4, hungry: true}, {out: true, hungry: true}},
			target: []int{2, 0},
			want:   []bool{false, false},
		},
		{
			name:   "every lease above its share is named",
			leases: []usage{{granted: 3, hungry: true}, {granted: 3, hungry: true}, {waiting: true, hungry: true}},
			target: []int{2, 2, 2},
			want:   []bool{true, true, false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := overShare(tt.leases, tt.target); !slices.Equal(got, tt.want) {
				t.Fatalf("overShare(%+v, %v) = %v, want %v", tt.leases, tt.target, got, tt.want)
			}
		})
	}
}
