// Command govmd runs a virtual machine on KVM: a Linux kernel (+initrd)
// booted directly, a serial console, virtio-net NICs backed by taps and
// virtio-blk disks backed by raw images.
//
//	govmd run --kernel PATH [--initrd PATH] [--cmdline STR] [--memory 512M] [--cpus N]
//	          [--console stdio|PATH] [--net tap=NAME[,...]]... [--disk PATH[,ro][,serial=ID][,queues=N]]...
//	govmd version
//
// Exit status: 0 when the guest powers off, 1 when the VM fails (triple
// fault, emulation failure, internal error), 2 for bad usage or input, 3
// when the guest asks to reboot (govmd does not restart it), 130 when
// interrupted.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
