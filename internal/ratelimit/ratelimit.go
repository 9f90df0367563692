// Package ratelimit keeps guest-triggered log lines from flooding the host
// log: a guest can cause an error on every access, the log must not grow with
// it.
package ratelimit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Logger passes at most Burst records per Interval to the wrapped logger and
// counts the rest; the count of suppressed records is reported with the next
// record that gets through. The zero value is not usable; use New.
type Logger struct {
	log      *slog.Logger
	interval time.Duration
	burst    int

	mu         sync.Mutex
	windowFrom time.Time
	inWindow   int
	suppressed int
	now        func() time.Time
}

// New returns a Logger that lets burst records through per interval.
func New(log *slog.Logger, interval time.Duration, burst int) *Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Logger{log: log, interval: interval, burst: burst, now: time.Now}
}

// Warn logs at warning level, subject to the limit.
func (l *Logger) Warn(msg string, args ...any) { l.logAt(slog.LevelWarn, msg, args...) }

// Info logs at info level, subject to the limit.
func (l *Logger) Info(msg string, args ...any) { l.logAt(slog.LevelInfo, msg, args...) }

// Error logs at error level, subject to the limit.
func (l *Logger) Error(msg string, args ...any) { l.logAt(slog.LevelError, msg, args...) }

func (l *Logger) logAt(level slog.Level, msg string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	now := l.now()
	if now.Sub(l.windowFrom) >= l.interval {
		l.windowFrom = now
		l.inWindow = 0
	}
	if l.inWindow >= l.burst {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.inWindow++
	sup := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if sup > 0 {
		args = append(args, "suppressed", sup)
	}
	l.log.Log(context.Background(), level, msg, args...)
}
