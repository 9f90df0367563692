package acpi

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// iaslProblem matches what iasl prints about a malformed table: checksum
// warnings, parse errors, truncated structures, unknown subtables.
var iaslProblem = regexp.MustCompile(`(?i)error|warning|invalid|incorrect|failure|exception|unknown|AE_[A-Z_]+|\*\*\*\*|too long|terminates`)

// TestIASLDisassembly writes every generated table to a temporary directory
// and runs the ACPICA disassembler on it (apt-get install acpica-tools).
// Any complaint fails the test. The disassembled DSDT is then compiled
// again, which must succeed without errors or warnings. The RSDP is not a
// table iasl accepts on its own; parse checks it.
func TestIASLDisassembly(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl not installed (apt-get install acpica-tools)")
	}
	configs := map[string]Config{"full": testConfig()}
	small := testConfig()
	small.CPUs = 1
	small.Serial = false
	small.PowerButton = true
	small.PCI.ECAM = ECAM{}
	small.PCI.Mem64 = Window{}
	small.PCI.PRT = nil
	small.PCI.IO = []IORange{{0xc000, 0xffff}}
	configs["small"] = small
	high := testConfig()
	high.PCI.ECAM = ECAM{Base: 0x80_0000_0000, Buses: 256}
	configs["high ECAM"] = high
	noPCI := testConfig()
	noPCI.PCI = nil
	configs["no PCI"] = noPCI

	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			blob, rsdpAddr, err := Build(cfg, testBase)
			if err != nil {
				t.Fatal(err)
			}
			p := parse(t, blob, testBase, rsdpAddr)
			dir := t.TempDir()
			for sig, tb := range p.tables {
				file := filepath.Join(dir, strings.ToLower(sig)+".dat")
				if err := os.WriteFile(file, tb, 0o644); err != nil {
					t.Fatal(err)
				}
				cmd := exec.Command(iasl, "-d", file)
				cmd.Dir = dir
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("iasl -d %s: %v\n%s", sig, err, out)
				}
				dsl, err := os.ReadFile(strings.TrimSuffix(file, ".dat") + ".dsl")
				if err != nil {
					t.Fatalf("%s: no disassembly: %v\n%s", sig, err, out)
				}
				for _, text := range []string{stripBanner(string(out)), string(dsl)} {
					if m := iaslProblem.FindString(text); m != "" {
						t.Errorf("iasl -d %s reports %q:\n%s", sig, m, text)
					}
				}
				if sig != "DSDT" {
					continue
				}
				d := string(dsl)
				want := []string{`_S5_`, `Scope (\_SB)`}
				if cfg.PCI != nil {
					want = append(want, "_PRT", "PNP0A03", "Device (PCI0)", "WordBusNumber", "DWordMemory")
				}
				if cfg.Serial {
					want = append(want, "PNP0501", "IRQNoFlags ()")
				}
				if cfg.PCI != nil && cfg.PCI.ECAM.Buses != 0 {
					want = append(want, "PNP0A08", "PNP0C02")
				}
				for _, w := range want {
					if !strings.Contains(d, w) {
						t.Errorf("DSDT disassembly lacks %q", w)
					}
				}
				for _, bad := range []string{"Method (", "While ("} {
					if strings.Contains(d, bad) {
						t.Errorf("DSDT contains %q: it must stay static", bad)
					}
				}
				cmd = exec.Command(iasl, "-p", "recompiled", "dsdt.dsl")
				cmd.Dir = dir
				out, err = cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "0 Errors, 0 Warnings") {
					t.Errorf("recompiling the DSDT disassembly: %v\n%s", err, out)
				}
			}
		})
	}
}

// stripBanner drops iasl's copyright banner, which would match nothing but
// is noise in failure messages.
func stripBanner(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Copyright") || strings.Contains(l, "Intel ACPI Component Architecture") ||
			strings.Contains(l, "Compiler/Disassembler version") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}
