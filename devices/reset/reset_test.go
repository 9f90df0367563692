package reset

import "testing"

func TestResetTriggers(t *testing.T) {
	n := 0
	c := &CF9{OnReset: func() { n++ }}
	c.Write(0, []byte{0x02}) // select hard reset, no trigger
	c.Write(0, []byte{0x06})
	c.Write(0, []byte{0x06, 0})
	k := &I8042{OnReset: func() { n++ }}
	k.Write(4, []byte{0xd1})
	k.Write(4, []byte{0xfe})
	k.Write(0, []byte{0xfe})
	if n != 2 {
		t.Fatalf("resets = %d, want 2", n)
	}
	b := []byte{0xff}
	k.Read(4, b)
	if b[0] != 0 {
		t.Fatal("i8042 status not empty")
	}
}
