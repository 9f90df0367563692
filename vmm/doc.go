// Package vmm assembles one virtual machine from a Config — guest memory,
// vCPUs, the in-kernel interrupt controller, port I/O and MMIO buses,
// platform devices, PCI devices, ACPI tables and the kernel — and runs it
// until the guest powers off, resets, fails, or the context is canceled.
package vmm
