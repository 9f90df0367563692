// Package layering holds no code: its test checks the import rules of
// docs/design.md over the whole module, so that they cannot erode
// unnoticed. Imports point downward only: a device model never imports
// kvm, pci or vmm (it sees guest memory, queues and a transport, nothing
// of the hypervisor), and internal/ holds leaves that never import a
// device or the PCI transport.
package layering
