package broker

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// RepeatInterval is how often one warning or error is logged while it
// keeps happening: a full disk fails every save of the state file, ten
// times a second, and a log that says so ten times a second fills what
// is left and buries everything else.
const RepeatInterval = 10 * time.Second

// LimitRepeats returns a logger that writes each warning and error (by
// logger name and message) at most once per every, adding how many it
// held back since it last wrote it. Other levels pass through. Loggers
// made from it with Named, ResetNamed and With share its memory.
func LimitRepeats(log hclog.Logger, every time.Duration) hclog.Logger {
	return &repeatLimiter{Logger: log, every: every, seen: &repeats{last: map[string]*repeat{}, now: time.Now}}
}

type repeatLimiter struct {
	hclog.Logger
	every time.Duration
	seen  *repeats
}

type repeats struct {
	mu   sync.Mutex
	last map[string]*repeat
	now  func() time.Time
}

type repeat struct {
	at       time.Time
	withheld int
}

// allow tells whether msg may be written now, and the arguments to add.
func (l *repeatLimiter) allow(msg string) ([]any, bool) {
	key := l.Logger.Name() + "\x00" + msg
	l.seen.mu.Lock()
	defer l.seen.mu.Unlock()
	now := l.seen.now()
	r, ok := l.seen.last[key]
	if !ok {
		// Bound the memory: messages are constants, but be safe.
		if len(l.seen.last) > 1024 {
			clear(l.seen.last)
		}
		l.seen.last[key] = &repeat{at: now}
		return nil, true
	}
	if now.Sub(r.at) < l.every {
		r.withheld++
		return nil, false
	}
	var extra []any
	if r.withheld > 0 {
		extra = []any{"repeated", r.withheld, "over", now.Sub(r.at).Round(time.Second)}
	}
	r.at, r.withheld = now, 0
	return extra, true
}

func (l *repeatLimiter) Log(level hclog.Level, msg string, args ...any) {
	if level < hclog.Warn {
		l.Logger.Log(level, msg, args...)
		return
	}
	if extra, ok := l.allow(msg); ok {
		l.Logger.Log(level, msg, append(args, extra...)...)
	}
}

func (l *repeatLimiter) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *repeatLimiter) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l *repeatLimiter) Named(name string) hclog.Logger {
	return &repeatLimiter{Logger: l.Logger.Named(name), every: l.every, seen: l.seen}
}

func (l *repeatLimiter) ResetNamed(name string) hclog.Logger {
	return &repeatLimiter{Logger: l.Logger.ResetNamed(name), every: l.every, seen: l.seen}
}

func (l *repeatLimiter) With(args ...any) hclog.Logger {
	return &repeatLimiter{Logger: l.Logger.With(args...), every: l.every, seen: l.seen}
}
