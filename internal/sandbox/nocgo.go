//go:build !cgo

package sandbox

// cgoBuild says the binary links glibc (cgo), whose threads need more of
// the filter than the Go runtime's do.
const cgoBuild = false
