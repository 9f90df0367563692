package eventfd

import (
	"errors"
	"testing"
	"time"
)

func TestWaitAndCancel(t *testing.T) {
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Write(); err != nil {
		t.Fatal(err)
	}
	if err := e.Write(); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Wait(); err != nil || n != 2 {
		t.Fatalf("Wait = %d, %v", n, err)
	}
	if e.TryRead() {
		t.Fatal("counter not reset")
	}
	done := make(chan error)
	go func() { _, err := e.Wait(); done <- err }()
	time.Sleep(10 * time.Millisecond)
	e.Cancel()
	select {
	case err := <-done:
		if !errors.Is(err, ErrCanceled) {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Cancel did not wake the waiter")
	}
	e.Resume()
	_ = e.Write()
	if _, err := e.Wait(); err != nil {
		t.Fatal(err)
	}
}
