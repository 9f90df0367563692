package ratelimit

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimits(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Second, 2)
	now := time.Unix(100, 0)
	l.now = func() time.Time { return now }
	for i := 0; i < 5; i++ {
		l.Warn("guest fault")
	}
	if got := strings.Count(buf.String(), "guest fault"); got != 2 {
		t.Fatalf("got %d lines in first window, want 2", got)
	}
	now = now.Add(2 * time.Second)
	l.Warn("guest fault")
	if !strings.Contains(buf.String(), "suppressed=3") {
		t.Fatalf("suppressed count missing: %q", buf.String())
	}
}
