package fs

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/govmd/govmd/memory"
	"github.com/govmd/govmd/virtio/vhostuser"
)

func TestCheckTag(t *testing.T) {
	for _, tc := range []struct {
		tag string
		ok  bool
	}{
		{"data", true},
		{"a-b_c.1", true},
		{"x123456789012345678901234567890abcde", true}, // 36 bytes
		{"x123456789012345678901234567890abcdef", false},
		{"", false},
		{"a b", false},
		{"a,b", false},
		{"a/b", false},
		{"caf\xc3\xa9", false},
	} {
		if err := CheckTag(tc.tag); (err == nil) != tc.ok {
			t.Errorf("CheckTag(%q) = %v, want ok=%v", tc.tag, err, tc.ok)
		} else if err != nil && !errors.Is(err, ErrShare) {
			t.Errorf("CheckTag(%q): %v is not ErrShare", tc.tag, err)
		}
	}
}

func TestShareCheck(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		s    Share
		ok   bool
	}{
		{"dir", Share{Path: dir, Tag: "t"}, true},
		{"missing", Share{Path: filepath.Join(dir, "nope"), Tag: "t"}, false},
		{"file", Share{Path: file, Tag: "t"}, false},
		{"bad tag", Share{Path: dir, Tag: ""}, false},
	} {
		err := tc.s.Check()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Check() = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrShare) {
			t.Errorf("%s: %v is not ErrShare", tc.name, err)
		}
	}
}

func TestConfigBytes(t *testing.T) {
	b := ConfigBytes("data")
	if len(b) != ConfigSize || string(b[:5]) != "data\x00" || binary.LittleEndian.Uint32(b[TagMax:]) != 1 {
		t.Fatalf("ConfigBytes = %x", b)
	}
}

func TestArgv(t *testing.T) {
	c := Config{Share: Share{Path: "/srv/x", Tag: "x"}, Virtiofsd: "/bin/false"}
	got, err := c.argv()
	if err != nil || !slices.Equal(got, []string{"/bin/false", "--fd=3", "-o", "source=/srv/x", "-o", "sandbox=namespace", "-o", "log_level=err"}) {
		t.Errorf("argv = %q, %v", got, err)
	}
	c.Share.ReadOnly = true
	if _, err := c.argv(); err == nil {
		t.Errorf("a read-only share without the helper was accepted")
	}
	c.ReadOnlyHelper = []string{"/usr/bin/govmd", "share-ro"}
	got, err = c.argv()
	if err != nil || !slices.Equal(got[:4], []string{"/usr/bin/govmd", "share-ro", "/srv/x", "--"}) || got[4] != "/bin/false" || got[7] != "source="+ReadOnlyMount {
		t.Errorf("read-only argv = %q, %v", got, err)
	}
}

func TestFindVirtiofsd(t *testing.T) {
	if _, err := FindVirtiofsd("/no/such/virtiofsd"); !errors.Is(err, ErrShare) {
		t.Errorf("a missing virtiofsd: %v", err)
	}
	if p, err := FindVirtiofsd("/bin/true"); err != nil || p != "/bin/true" {
		t.Errorf("FindVirtiofsd(/bin/true) = %q, %v", p, err)
	}
}

// TestDaemon starts the host's virtiofsd for a directory, connects a
// vhost-user frontend to it (the handshake with the configuration this
// side provides) and stops it: the process is gone after Stop.
func TestDaemon(t *testing.T) {
	path, err := FindVirtiofsd("")
	if err != nil {
		t.Skip(err)
	}
	if os.Geteuid() != 0 {
		t.Skip("virtiofsd's namespace sandbox needs root")
	}
	mem, err := memory.NewShared([]memory.Range{{GPA: 0, Size: 16 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	d, err := Start(Config{Share: Share{Path: t.TempDir(), Tag: "t"}, Virtiofsd: path})
	if err != nil {
		t.Fatal(err)
	}
	fe, err := vhostuser.NewFrontend(vhostuser.FrontendConfig{Conn: d.Conn, Mem: mem, Type: DeviceType,
		QueueSizes: QueueSizes, ConfigSize: ConfigSize, Config: ConfigBytes("t"), Timeout: 5 * time.Second})
	if err != nil {
		d.Stop(time.Second)
		t.Fatal(err)
	}
	var tag [4]byte
	fe.ReadConfig(0, tag[:])
	if string(tag[:2]) != "t\x00" {
		t.Errorf("configuration tag %q", tag)
	}
	fe.Close()
	d.Stop(2 * time.Second)
	select {
	case <-d.Done():
	default:
		t.Fatal("virtiofsd still running after Stop")
	}
}
