package layering

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/govmd/govmd/"

// pkg is what go list -json says of one package.
type pkg struct {
	ImportPath                string
	Deps                      []string // every package it imports, directly or not
	Imports                   []string
	TestImports, XTestImports []string
}

// list returns every package of the module with its dependencies.
func list(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", "../../...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("no go command: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	return pkgs
}

// rel returns a module package's path relative to the module, or "".
func rel(path string) string {
	r, ok := strings.CutPrefix(path, module)
	if !ok {
		return ""
	}
	return r
}

func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

// kit reports whether a package is a test kit (nettest, virtiotest,
// pcidriver under it): a guest driver that may use every layer below.
func kit(path string) bool {
	for _, el := range strings.Split(path, "/") {
		if strings.HasSuffix(el, "test") {
			return true
		}
	}
	return false
}

// TestLayering checks, for every package of the module, the rules of
// docs/design.md against everything it depends on (go list's Deps, the
// transitive closure of its non-test imports).
func TestLayering(t *testing.T) {
	rules := []struct {
		from      string   // packages under this directory...
		forbidden []string // ...depend on nothing under these
		why       string
	}{
		{"devices", []string{"kvm", "pci", "vmm", "cmd"}, "device models never reach the hypervisor or the PCI layer"},
		{"virtio", []string{"kvm", "vmm", "devices", "cmd"}, "virtio knows nothing of KVM or devices"},
		{"internal/eventfd", []string{"devices", "virtio", "pci", "vmm", "kvm"}, "internal/ holds leaves"},
		{"internal/ratelimit", []string{"devices", "virtio", "pci", "vmm", "kvm"}, "internal/ holds leaves"},
		{"internal/netns", []string{"devices", "virtio", "pci", "vmm", "kvm"}, "internal/ holds leaves"},
		{"internal/testkernel", []string{"devices", "virtio", "pci", "vmm"}, "internal/ holds leaves"},
		{"internal/cmd", []string{"devices", "virtio", "pci", "vmm", "kvm"}, "internal/ holds leaves"},
		{"kvm", []string{"vmm", "devices", "virtio", "pci", "boot", "acpi", "cmd"}, "kvm is the bottom layer"},
		{"memory", []string{"kvm", "vmm", "devices", "virtio", "pci"}, "memory is a bottom layer"},
		{"bus", []string{"kvm", "vmm", "devices", "virtio", "pci"}, "bus is a bottom layer"},
		{"pci", []string{"kvm", "vmm", "devices", "virtio"}, "pci knows no virtio"},
		{"vmm", []string{"cmd", "e2e", "api"}, "only the CLI and the API are above vmm"},
		{"api", []string{"cmd", "e2e"}, "only the CLI is above the API"},
	}
	checked := 0
	for _, p := range list(t) {
		from := rel(p.ImportPath)
		for _, r := range rules {
			if !under(from, r.from) || kit(from) {
				continue
			}
			checked++
			for _, d := range p.Deps {
				dep := rel(d)
				for _, f := range r.forbidden {
					if dep != "" && under(dep, f) {
						t.Errorf("%s depends on %s: %s", from, dep, r.why)
					}
				}
			}
		}
		// Product code never imports a test kit.
		if !kit(from) && !under(from, "e2e") {
			for _, d := range p.Deps {
				if dep := rel(d); dep != "" && kit(dep) {
					t.Errorf("%s depends on the test kit %s", from, dep)
				}
			}
		}
	}
	if checked < 15 {
		t.Fatalf("only %d packages matched a rule", checked)
	}
}
