package control

import (
	"time"

	"github.com/tokend/tokend/broker/memory"
)

// pressure adds r to the window and returns the stall rates over it.
func (e *engine) pressure(r memory.Reading) (some, full float64, span time.Duration) {
	if n := len(e.window); n > 0 {
		last := e.window[n-1]
		if !r.At.After(last.At) || r.Pressure.Some < last.Pressure.Some || r.Pressure.Full < last.Pressure.Full {
			e.window = e.window[:0] // another file, or a clock step: start over
		}
	}
	e.window = append(e.window, memory.Reading{At: r.At, Pressure: r.Pressure})
	for len(e.window) > 2 && !e.window[1].At.After(r.At.Add(-pressureWindow)) {
		e.window = e.window[1:]
	}
	st, err := r.StallSince(e.window[0])
	if err != nil {
		return 0, 0, 0 // a single reading: no interval yet
	}
	return st.Some, st.Full, st.Interval
}

// moveSoftCap remembers the working set at which pressure appears and
// relaxes that cap slowly once pressure is gone.
func (e *engine) moveSoftCap(pressured bool, ws, limit uint64, now time.Time) {
	switch {
	case pressured && !e.wasPressured:
		if e.softCap == 0 || ws < e.softCap {
			e.softCap = ws
		}
		e.capMoved = now
	case pressured:
		e.capMoved = now
	case e.softCap > 0 && now.Sub(e.capMoved) >= e.p.GrowthInterval:
		e.softCap += limit / capRelaxDen
		e.capMoved = now
		if e.softCap >= limit {
			e.softCap = 0
		}
	}
	e.wasPressured = pressured
}
