package vmm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmd/govmd/devices/console"
	"github.com/govmd/govmd/devices/fs"
	vnet "github.com/govmd/govmd/devices/net"
	"github.com/govmd/govmd/virtio/pcitransport"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"512M", 512 << 20, true}, {"2G", 2 << 30, true}, {"1024k", 1 << 20, true}, {"4096", 4096, true},
		{"1GiB", 0, false}, {"1Gi", 0, false}, {"", 0, false}, {"-1M", 0, false}, {"M", 0, false},
		{"99999999999999999999G", 0, false}, {"9000000000T", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseNet(t *testing.T) {
	tests := []struct {
		in   string
		want NetConfig
		ok   bool
	}{
		{"tap=tap0", NetConfig{Tap: "tap0", Transport: pcitransport.Transitional, Offload: vnet.OffloadOn}, true},
		{"tap=t1,transport=legacy,offload=csum,locked", NetConfig{Tap: "t1", Transport: pcitransport.Legacy, Offload: vnet.OffloadCsum, Locked: true}, true},
		{"tap=t1,mac=02:00:00:00:00:01,transport=modern,offload=off", NetConfig{Tap: "t1", Transport: pcitransport.Modern, Offload: vnet.OffloadOff}, true},
		{"", NetConfig{}, false},
		{"mac=02:00:00:00:00:01", NetConfig{}, false},
		{"tap=", NetConfig{}, false},
		{"tap=averyveryverylongname", NetConfig{}, false},
		{"tap=t,mac=01:00:00:00:00:01", NetConfig{}, false},
		{"tap=t,mac=zz", NetConfig{}, false},
		{"tap=t,transport=pci", NetConfig{}, false},
		{"tap=t,offload=tso", NetConfig{}, false},
		{"tap=t,bogus=1", NetConfig{}, false},
	}
	for _, tc := range tests {
		got, err := ParseNet(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseNet(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("ParseNet(%q) error not ErrConfig: %v", tc.in, err)
			}
			continue
		}
		got.MAC = nil
		if got.Tap != tc.want.Tap || got.Transport != tc.want.Transport || got.Offload != tc.want.Offload || got.Locked != tc.want.Locked {
			t.Errorf("ParseNet(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseDisk(t *testing.T) {
	d, err := ParseDisk("/tmp/x.img,ro,serial=abc")
	if err != nil || !d.ReadOnly || d.Serial != "abc" || d.Path != "/tmp/x.img" {
		t.Fatalf("ParseDisk = %+v, %v", d, err)
	}
	d, err = ParseDisk("/var/lib/images/disk-one.raw")
	if err != nil || d.Serial != "disk-one.raw" {
		t.Fatalf("default serial: %+v, %v", d, err)
	}
	d, err = ParseDisk("/tmp/x.img,queues=4")
	if err != nil || d.Queues != 4 {
		t.Fatalf("queues=4: %+v, %v", d, err)
	}
	for _, bad := range []string{"", "x.img,serial=123456789012345678901", "x.img,rw", "x.img,transport=scsi",
		"x.img,queues=0", "x.img,queues=65", "x.img,queues=two"} {
		if _, err := ParseDisk(bad); err == nil {
			t.Errorf("ParseDisk(%q) accepted", bad)
		}
	}
}

func TestParseShare(t *testing.T) {
	sh, err := ParseShare("/srv/data,tag=data,ro")
	if err != nil || sh.Path != "/srv/data" || sh.Tag != "data" || !sh.ReadOnly {
		t.Fatalf("ParseShare = %+v, %v", sh, err)
	}
	sh, err = ParseShare("rel,tag=t")
	if wd, _ := os.Getwd(); err != nil || sh.Path != filepath.Join(wd, "rel") || sh.ReadOnly {
		t.Fatalf("relative path: %+v, %v", sh, err)
	}
	for _, bad := range []string{"", "tag=x", "/srv", "/srv,tag=", "/srv,tag=a b", "/srv,tag=a/b", "/srv,tag=x,rw", "/srv,tag=x,cache=none"} {
		if _, err := ParseShare(bad); err == nil || !errors.Is(err, ErrConfig) {
			t.Errorf("ParseShare(%q) = %v, want an ErrConfig", bad, err)
		}
	}
}

func TestAppendArchive(t *testing.T) {
	for _, tc := range []struct{ initrd, want string }{
		{"", "ARCH"},
		{"abcd", "abcdARCH"},
		{"abcde", "abcde\x00\x00\x00ARCH"},
		{"ab", "ab\x00\x00ARCH"},
	} {
		if got := string(AppendArchive([]byte(tc.initrd), []byte("ARCH"))); got != tc.want {
			t.Errorf("AppendArchive(%q) = %q, want %q", tc.initrd, got, tc.want)
		}
	}
}

// TestDiskQueuesDefault: a disk gets one request queue per vCPU, at most
// DefaultDiskQueues, unless queues= says otherwise.
func TestDiskQueuesDefault(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "d.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ cpus, queues, want int }{
		{0, 0, 1}, {2, 0, 2}, {64, 0, DefaultDiskQueues}, {4, 1, 1}, {1, 8, 8},
	} {
		c := Config{Kernel: img, CPUs: tc.cpus, Disks: []DiskConfig{{Path: img, Queues: tc.queues}}}
		if err := c.Validate(); err != nil {
			t.Fatalf("cpus=%d queues=%d: %v", tc.cpus, tc.queues, err)
		}
		if got := c.Disks[0].Queues; got != tc.want {
			t.Errorf("cpus=%d queues=%d: %d queues, want %d", tc.cpus, tc.queues, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "k")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Kernel: kernel}, true},
		{"no kernel", Config{}, false},
		{"missing kernel", Config{Kernel: filepath.Join(dir, "nope")}, false},
		{"kernel is dir", Config{Kernel: dir}, false},
		{"missing initrd", Config{Kernel: kernel, Initrd: filepath.Join(dir, "nope")}, false},
		{"memory too small", Config{Kernel: kernel, Memory: 1 << 20}, false},
		{"memory not MiB", Config{Kernel: kernel, Memory: 64<<20 + 1}, false},
		{"cpus negative", Config{Kernel: kernel, CPUs: -1}, false},
		{"cpus too many", Config{Kernel: kernel, CPUs: 65}, false},
		{"bad profile", Config{Kernel: kernel, CPUProfile: CPUProfile(9)}, false},
		{"duplicate tap", Config{Kernel: kernel, Nets: []NetConfig{{Tap: "a"}, {Tap: "a"}}}, false},
		{"missing disk", Config{Kernel: kernel, Disks: []DiskConfig{{Path: filepath.Join(dir, "nope")}}}, false},
		{"disk queues too many", Config{Kernel: kernel, Disks: []DiskConfig{{Path: kernel, Queues: 65}}}, false},
		{"share missing", Config{Kernel: kernel, Shares: []fs.Share{{Path: filepath.Join(dir, "nope"), Tag: "a"}}}, false},
		{"share is a file", Config{Kernel: kernel, Shares: []fs.Share{{Path: kernel, Tag: "a"}}}, false},
		{"share tag twice", Config{Kernel: kernel, Virtiofsd: "/bin/true", Shares: []fs.Share{{Path: dir, Tag: "a"}, {Path: dir, Tag: "a"}}}, false},
		{"share ro without helper", Config{Kernel: kernel, Virtiofsd: "/bin/true", Shares: []fs.Share{{Path: dir, Tag: "a", ReadOnly: true}}}, false},
		{"share without virtiofsd", Config{Kernel: kernel, Virtiofsd: filepath.Join(dir, "nope"), Shares: []fs.Share{{Path: dir, Tag: "a"}}}, false},
		{"share", Config{Kernel: kernel, Virtiofsd: "/bin/true", Shares: []fs.Share{{Path: dir, Tag: "a"}}}, true},
		{"console ports too many", Config{Kernel: kernel, ConsolePorts: make([]console.Port, console.MaxPorts+1)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrConfig) {
				t.Fatalf("error not ErrConfig: %v", err)
			}
		})
	}
}

func TestShmemTHP(t *testing.T) {
	for _, tc := range []struct {
		setting string
		want    bool
	}{
		{"always within_size advise [never] deny force\n", false},
		{"always within_size [advise] never deny force\n", true},
		{"[always] within_size advise never deny force", true},
		{"always within_size advise never [deny] force", false},
		{"always [within_size] advise never", true},
		{"", true},
	} {
		if got := shmemTHP(tc.setting); got != tc.want {
			t.Errorf("shmemTHP(%q) = %v, want %v", tc.setting, got, tc.want)
		}
	}
}

// TestReadImage: a user's file comes back whole whatever its size; one
// over the limit, a directory or a missing file is a config error.
func TestReadImage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		size  int // -1: no file; -2: a directory
		limit int64
		ok    bool
	}{
		{"empty", 0, 1 << 20, true},
		{"one byte", 1, 1 << 20, true},
		{"pages and a bit", 3*4096 + 5, 1 << 20, true},
		{"at the limit", 4096, 4096, true},
		{"over the limit", 4097, 4096, false},
		{"missing", -1, 4096, false},
		{"directory", -2, 4096, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			want := make([]byte, max(tc.size, 0))
			for i := range want {
				want[i] = byte(i * 7)
			}
			switch tc.size {
			case -1:
			case -2:
				if err := os.Mkdir(path, 0o755); err != nil {
					t.Fatal(err)
				}
			default:
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadImage(path, "kernel", tc.limit)
			if !tc.ok {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("error %v, want a config error", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%d bytes, error %v; want the file's %d", len(got), err, len(want))
			}
		})
	}
}
