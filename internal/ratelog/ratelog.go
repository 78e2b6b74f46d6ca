// Package ratelog writes log lines rate-limited per reason, saying how many
// it held back, so a flood of bad clients or a dead peer cannot flood the log.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log writes at most burst lines per reason per second. Not for the
// per-frame path: it takes a lock.
type Log struct {
	log   *slog.Logger
	burst int

	mu      sync.Mutex
	reasons map[string]*rateWindow // Lock: mu
}

type rateWindow struct {
	start      time.Time
	count      int
	suppressed int
}

func New(log *slog.Logger, burst int) *Log {
	return &Log{log: log, burst: burst, reasons: make(map[string]*rateWindow)}
}

// Log writes msg with reason and attrs at level, unless reason already used its
// burst in the current second.
func (r *Log) Log(level slog.Level, reason, msg string, attrs ...slog.Attr) {
	if !r.log.Enabled(context.Background(), level) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	w := r.reasons[reason]
	if w == nil {
		w = &rateWindow{start: now}
		r.reasons[reason] = w
	}
	suppressed := 0
	if now.Sub(w.start) >= time.Second {
		suppressed = w.suppressed
		w.start, w.count, w.suppressed = now, 0, 0
	}
	w.count++
	if w.count > r.burst {
		w.suppressed++
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	attrs = append(attrs, slog.String("reason", reason))
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed_since_last", suppressed))
	}
	r.log.LogAttrs(context.Background(), level, msg, attrs...)
}
