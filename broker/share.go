package broker

import (
	"math"
	"slices"
	"sort"
)

// usage is what one pass observed of a lease, the input to sharing.
type usage struct {
	granted int
	free    int  // tokens in the FIFO now
	idle    int  // tokens free in this pass and the one before: unused, not between jobs
	hungry  bool // every token granted is held: the build may want more
	ending  bool
	out     bool // holds no slot (a nix build that has not asked yet): no share
	waiting bool // asks for its slot and is not admitted yet
	first   bool // its share is served before the others' (Broker.ServeFirst)
}

// shares decides how many tokens each lease should have. allowance is what
// may be handed out (budget minus the active leases' implicit slots).
//
// It is work-conserving and fair: when nobody is hungry and the allowance
// covers what is granted, nothing moves; otherwise the allowance is
// water-filled, a lease that is not hungry asking only for the tokens it
// holds (at least one), so a lone build can use everything and hungry builds converge to
// equal shares. Ending leases, and leases that hold no slot yet, get
// nothing. A lease served first has its demand met before the rest is
// shared.
func shares(allowance int, leases []usage) []int {
	target := make([]int, len(leases))
	granted, anyHungry, anyEnding := 0, false, false
	for i, u := range leases {
		granted += u.granted
		if u.out {
			continue
		}
		anyHungry = anyHungry || (u.hungry && !u.ending)
		anyEnding = anyEnding || u.ending
		if !u.ending {
			target[i] = u.granted
		}
	}
	if !anyHungry && !anyEnding && granted <= allowance {
		return target
	}

	demand := make([]int, len(leases))
	var active []int
	for i, u := range leases {
		switch {
		case u.ending, u.out:
			continue
		case u.hungry:
			demand[i] = math.MaxInt
		default:
			// An idle lease keeps one token so its clients can show
			// demand by taking it; stripped to none it would look hungry
			// and pull tokens back and forth with other idle leases.
			demand[i] = max(u.granted-u.idle, 1)
		}
		active = append(active, i)
	}
	// Smallest demand first, so each lease's share of what is left is
	// known when it is reached; among equals the one holding more goes
	// last and gets any remainder, which moves fewer tokens.
	sort.SliceStable(active, func(a, b int) bool {
		da, db := demand[active[a]], demand[active[b]]
		if da != db {
			return da < db
		}
		return leases[active[a]].granted < leases[active[b]].granted
	})
	remaining := max(allowance, 0)
	if k := slices.IndexFunc(active, func(i int) bool { return leases[i].first }); k >= 0 {
		i := active[k]
		target[i] = min(demand[i], remaining)
		remaining -= target[i]
		active = slices.Delete(active, k, k+1)
	}
	for k, i := range active {
		share := remaining / (len(active) - k)
		target[i] = min(demand[i], share)
		remaining -= target[i]
	}
	return target
}

// waits reports whether the lease wants tokens it cannot have yet: it is
// not admitted, or it is below its share with every token it has in use.
func (u usage) waits(target int) bool {
	return !u.ending && !u.out && (u.waiting || (u.hungry && u.granted < target))
}

// overShare tells which leases hold more tokens than their share while
// another lease waits: for admission, or below its share with every token
// it has in use. Tokens in a client's hands cannot be taken back, so such a
// lease keeps them until its jobs end (or for good, if its client keeps
// them without running jobs); shares already gives it no more, and the
// collector hands what it returns to the waiters.
func overShare(leases []usage, target []int) []bool {
	over := make([]bool, len(leases))
	waits := false
	for i, u := range leases {
		waits = waits || u.waits(target[i])
	}
	if !waits {
		return over
	}
	for i, u := range leases {
		over[i] = !u.ending && !u.out && u.granted > target[i]
	}
	return over
}
