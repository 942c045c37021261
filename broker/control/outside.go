package control

import "time"

// sample is one value at one tick.
type sample struct {
	at time.Time
	v  uint64
}

const (
	// outsideSmooth is how many ticks the ends of the window take the
	// least of: a job that started since its lease was last sampled is
	// counted as outside until it is, a bump of one tick or two; a
	// program growing keeps growing through them.
	outsideSmooth = 3
	// outsideFloor is the least rise over the window that is growth:
	// less is the page cache and slab moving.
	outsideFloor = heavyFloor
)

// forecastOutside is what memory outside every lease (another program, a
// browser, a VM) is expected to grow by while jobs admitted now run: its
// rate over the last pressure window, held for a growth interval. Running
// jobs cannot be made to give memory back, so room for what the outside
// is taking must be kept before they are admitted, as it is for their own
// growth. The rate is taken between the least values at the two ends of
// the window, so a job not sampled yet does not look like an outside
// program, and a rise under outsideFloor is none.
func (e *engine) forecastOutside(outside uint64, now time.Time) uint64 {
	e.outside = append(e.outside, sample{now, outside})
	for len(e.outside) > 2*outsideSmooth && !e.outside[1].at.After(now.Add(-pressureWindow)) {
		e.outside = e.outside[1:]
	}
	w := e.outside
	span := w[len(w)-1].at.Sub(w[0].at)
	if len(w) < 2*outsideSmooth || span < pressureWindow*3/4 {
		return 0
	}
	least := func(ss []sample) uint64 {
		m := ss[0].v
		for _, s := range ss[1:] {
			m = min(m, s.v)
		}
		return m
	}
	from, to := least(w[:outsideSmooth]), least(w[len(w)-outsideSmooth:])
	if to < from+outsideFloor {
		return 0
	}
	rate := float64(to-from) / span.Seconds()
	return uint64(rate * e.p.GrowthInterval.Seconds())
}
