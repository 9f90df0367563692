package virtio

import "testing"

func TestGatherScatter(t *testing.T) {
	bufs := [][]byte{make([]byte, 2), make([]byte, 0), make([]byte, 3), make([]byte, 4)}
	src := []byte("abcdefghi")
	if n := Scatter(bufs, 0, src); n != 9 {
		t.Fatalf("Scatter = %d", n)
	}
	for _, c := range []struct {
		off, size int
		want      string
	}{
		{0, 9, "abcdefghi"}, {2, 6, "cdefgh"}, {7, 4, "hi"}, {9, 3, ""}, {100, 1, ""}, {1, 0, ""},
	} {
		got := make([]byte, c.size)
		if n := Gather(got, bufs, c.off); string(got[:n]) != c.want {
			t.Errorf("Gather(off %d, %d bytes) = %q, want %q", c.off, c.size, got[:n], c.want)
		}
	}
	if n := Scatter(bufs, 8, []byte("XYZ")); n != 1 || bufs[3][3] != 'X' {
		t.Fatalf("Scatter past the end = %d", n)
	}
	iov := AppendFrom(nil, bufs, 3)
	if len(iov) != 2 || string(iov[0]) != "de" || string(iov[1]) != "fghX" {
		t.Fatalf("AppendFrom = %q", iov)
	}
	if len(AppendFrom(nil, bufs, 10)) != 0 {
		t.Fatal("AppendFrom past the end is not empty")
	}
}
