package guestexec

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govmd/govmd/boot/execinit"
)

func newRun() *run {
	r := &run{cfg: Config{Log: slog.New(slog.DiscardHandler)}, events: make(chan execinit.Event, 16), panicked: make(chan struct{})}
	r.status.r, r.con.r = r, r
	return r
}

func drain(r *run) []string {
	var out []string
	for {
		select {
		case ev := <-r.events:
			out = append(out, fmt.Sprintf("%s/%d", ev.Kind, ev.Code))
		default:
			return out
		}
	}
}

// TestStatusPort: status lines arrive in any split, a bad or overlong line
// is dropped and the next one still counts.
func TestStatusPort(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string
	}{
		{"whole", []string{"init\nstart\nexit 7\n"}, []string{"init/0", "start/0", "exit/7"}},
		{"split", []string{"in", "it\nsta", "rt\nsignal 9", "\n"}, []string{"init/0", "start/0", "signal/9"}},
		{"no newline yet", []string{"exit 3"}, nil},
		{"garbage", []string{"bogus\nexit -1\nexit 99999999999\nexit 0\n"}, []string{"exit/0"}},
		{"overlong", []string{strings.Repeat("x", 600) + "\nexit 5\n"}, []string{"exit/5"}},
		{"overlong split", []string{strings.Repeat("x", 400), strings.Repeat("y", 400), "\nexit 6\n"}, []string{"exit/6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun()
			for _, w := range tc.writes {
				if n, err := r.status.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if got := drain(r); !slices.Equal(got, tc.want) {
				t.Fatalf("events %q, want %q", got, tc.want)
			}
		})
	}
}

// TestStatusFlood: a guest that sends status lines without end fills the
// bounded event queue; the rest are dropped, Write never blocks.
func TestStatusFlood(t *testing.T) {
	r := newRun()
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			r.status.Write([]byte("init\n"))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("status writes blocked")
	}
	if n := len(drain(r)); n != cap(r.events) {
		t.Fatalf("%d events queued, want %d", n, cap(r.events))
	}
}

// TestConsolePanic: a panic or oops line on the console is seen, in any
// split, and ordinary lines are not.
func TestConsolePanic(t *testing.T) {
	for _, tc := range []struct {
		text  string
		panic bool
	}{
		{"[    1.0] Kernel panic - not syncing: sysrq triggered crash\n", true},
		{"[    2.3] Oops: 0002 [#1] SMP\n", true},
		{"[    2.3] BUG: kernel NULL pointer dereference, address: 0000000000000000\n", true},
		{"[    0.1] Booting paravirtualized kernel on KVM\nhello world\n", false},
		{"Kernel panic - not syncing", false}, // no end of line yet
	} {
		r := newRun()
		for i := 0; i < len(tc.text); i += 7 {
			r.con.Write([]byte(tc.text[i:min(i+7, len(tc.text))]))
		}
		got := false
		select {
		case <-r.panicked:
			got = true
		default:
		}
		if got != tc.panic {
			t.Errorf("%q: panic seen %v, want %v", tc.text, got, tc.panic)
		}
	}
}

// TestConsoleTail: the kept console is bounded and ends with the latest
// output; the user's copy gets everything.
func TestConsoleTail(t *testing.T) {
	r := newRun()
	var all bytes.Buffer
	r.cfg.Console = &all
	line := strings.Repeat("z", 99) + "\n"
	for i := 0; i < 1000; i++ {
		r.con.Write([]byte(line))
	}
	r.con.Write([]byte("LAST\n"))
	tail := r.con.tail()
	if len(tail) != consoleKeep || !bytes.HasSuffix(tail, []byte("LAST\n")) {
		t.Fatalf("tail of %d bytes ending %q", len(tail), tail[max(0, len(tail)-10):])
	}
	if all.Len() != 1000*len(line)+5 {
		t.Fatalf("console copy of %d bytes", all.Len())
	}
}

func TestMergeEnv(t *testing.T) {
	got := MergeEnv([]string{"PATH=/bin", "HOME=/root"}, []string{"HOME=/tmp", "A=1", "B"})
	if want := []string{"PATH=/bin", "HOME=/tmp", "A=1", "B"}; !slices.Equal(got, want) {
		t.Fatalf("MergeEnv = %q, want %q", got, want)
	}
}

func TestTimingsString(t *testing.T) {
	s := time.Unix(100, 0)
	tm := Timings{Start: s, Built: s.Add(800 * time.Microsecond), FirstEntry: s.Add(1500 * time.Microsecond), Init: s.Add(time.Second)}
	if got := tm.String(); got != "built=0.8ms first_entry=1.5ms init=1000.0ms" {
		t.Fatalf("String = %q", got)
	}
}
