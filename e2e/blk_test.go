package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestDiskGuest boots with two disks on different transports: vda
// (modern, read-write) gets the test stream written and synced by the
// guest; vdb (legacy, read-only) holds a host-prepared image that the guest
// reads back and hashes, and refuses a write. After poweroff the host finds
// the guest's data in vda's image. With 2 vCPUs vda has the default two
// request queues (multiqueue) and vdb one (queues=1).
func TestDiskGuest(t *testing.T) {
	requireKVM(t)
	p := logProfile(t)
	blkBytes := p.BlkBytes
	dir := t.TempDir()
	rw := filepath.Join(dir, "rw.img")
	ro := filepath.Join(dir, "ro.img")
	if err := os.WriteFile(rw, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	roData := make([]byte, 2<<20)
	for i := range roData {
		roData[i] = byte(i*7 + i>>9)
	}
	if err := os.WriteFile(ro, roData, 0o644); err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("govmd.test=ready,virtio,blk-id,blk-write,blk-read,blk-ro govmd.blk.bytes=%d govmd.hash=%s "+
		"govmd.blk.write.dev=vda govmd.blk.read.dev=vdb govmd.blk.ro.dev=vdb govmd.blk.id.dev=vda", blkBytes, p.Hash)
	g := Start(t, "run", "--kernel", image(t, "linux/vmlinux"), "--initrd", image(t, "initrd.cpio"),
		"--cmdline", cmdline(t, extra), "--memory", "256M", "--cpus", "2",
		"--disk", rw+",serial=govmd-rw,transport=modern",
		"--disk", ro+",ro,transport=legacy,queues=1")
	g.Expect(`GOVMD-DONE status=`, p.Boot+4*p.Step)
	st := g.Wait(p.Step)
	res := g.Results()
	if res["blk.id.serial"] != "govmd-rw" {
		t.Errorf("serial %q, want govmd-rw", res["blk.id.serial"])
	}
	want := pattern(blkBytes)
	if res["blk.write.sha256"] != hexSHA(want) {
		t.Errorf("guest wrote sha256 %s, want %s", res["blk.write.sha256"], hexSHA(want))
	}
	img, err := os.ReadFile(rw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[:blkBytes], want) {
		t.Error("the image does not hold what the guest wrote")
	}
	if !bytes.Equal(img[blkBytes:], make([]byte, len(img)-blkBytes)) {
		t.Errorf("the guest's write spilled beyond %d bytes", blkBytes)
	}
	if got, want := res["blk.read."+p.Hash], digest(p.Hash, roData[:blkBytes]); got != want {
		t.Errorf("guest read %s %s of the host image, want %s", p.Hash, got, want)
	}
	if res["blk.ro.write_rejected"] != "1" {
		t.Errorf("read-only disk: write_rejected=%q", res["blk.ro.write_rejected"])
	}
	after, _ := os.ReadFile(ro)
	if !bytes.Equal(after, roData) {
		t.Error("the read-only image changed")
	}
	for _, q := range []string{"2/0/0 default/read/poll queues", "1/0/0 default/read/poll queues"} {
		if !consoleHas(g, q) {
			t.Errorf("the guest's virtio_blk did not report %q", q)
		}
	}
	if st != 0 {
		t.Fatalf("govmd exit status %d\n%s", st, g.Stderr())
	}
}

// TestDiskDurability kills govmd with SIGKILL as soon as the guest reports
// that its fsync returned, and checks that the data is in the image.
func TestDiskDurability(t *testing.T) {
	requireKVM(t)
	p := logProfile(t)
	blkBytes := p.BlkBytes
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	g := Start(t, "run", "--kernel", image(t, "linux/vmlinux"), "--initrd", image(t, "initrd.cpio"),
		"--cmdline", cmdline(t, fmt.Sprintf("govmd.test=blk-fsync,sleep govmd.wait=60 govmd.blk.bytes=%d", blkBytes)),
		"--memory", "256M", "--disk", img)
	g.Expect(`GOVMD-RESULT blk.fsync.done=1`, p.Boot+p.Step)
	g.Kill()
	g.Wait(p.Step)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:blkBytes], pattern(blkBytes)) {
		t.Fatal("data the guest fsynced is not in the image after SIGKILL")
	}
}
