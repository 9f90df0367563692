package main

import (
	"encoding/json"
	"flag"
	"os"
	"reflect"
	"sort"
	"testing"
)

func runFlagSet(t *testing.T) *flag.FlagSet {
	t.Helper()
	fs, _ := runFlags()
	return fs
}

// TestRunFlagsInConfig: every flag of govmd run is in the configuration
// schema, except those that say how govmd is driven.
func TestRunFlagsInConfig(t *testing.T) {
	fs := runFlagSet(t)
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := configKeys[f.Name]; !ok && f.Name != "api-socket" && f.Name != "config" {
			t.Errorf("run flag --%s is not in the configuration schema", f.Name)
		}
	})
	for k := range configKeys {
		if fs.Lookup(k) == nil {
			t.Errorf("configuration key %q is not a run flag", k)
		}
	}
}

// TestConfigOverride: the file sets what the command line does not; a
// repeatable flag on the command line replaces the file's list.
func TestConfigOverride(t *testing.T) {
	fs := runFlagSet(t)
	if err := fs.Parse([]string{"--cpus", "3", "--net", "tap=cli0"}); err != nil {
		t.Fatal(err)
	}
	file := `{"kernel": "/boot/k", "cpus": 2, "net": ["tap=f0", "tap=f1"], "disk": ["/d.img,ro"], "rng": false, "memory": "1G"}`
	if err := applyConfig(fs, []byte(file)); err != nil {
		t.Fatal(err)
	}
	got := configOf(fs)
	want := map[string]any{
		"kernel": "/boot/k", "cpus": 3, "net": []string{"tap=cli0"}, "disk": []string{"/d.img,ro"},
		"rng": false, "memory": "1G", "console": "stdio", "cmdline": "console=ttyS0",
	}
	for k, v := range want {
		if !reflect.DeepEqual(got[k], v) {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	// What GET /vm reports reads back as the same configuration.
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	fs2 := runFlagSet(t)
	if err := applyConfig(fs2, b); err != nil {
		t.Fatalf("GET /vm's config does not load: %v\n%s", err, b)
	}
	if got2 := configOf(fs2); !reflect.DeepEqual(got, got2) {
		t.Errorf("round trip:\n%v\n%v", got, got2)
	}
}

// TestConfigSchemaDocumented: docs/openapi.json's Config schema has
// exactly the configuration's keys.
func TestConfigSchemaDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Components struct {
			Schemas struct {
				Config struct {
					Properties map[string]struct {
						Type string `json:"type"`
					} `json:"properties"`
				} `json:"Config"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	types := map[configKind]string{cfgString: "string", cfgInt: "integer", cfgBool: "boolean", cfgList: "array"}
	var documented, keys []string
	for k, p := range doc.Components.Schemas.Config.Properties {
		documented = append(documented, k)
		if kind, ok := configKeys[k]; ok && types[kind] != p.Type {
			t.Errorf("%s: documented as %s, is %s", k, p.Type, types[kind])
		}
	}
	for k := range configKeys {
		keys = append(keys, k)
	}
	sort.Strings(documented)
	sort.Strings(keys)
	if !reflect.DeepEqual(documented, keys) {
		t.Errorf("documented %v\nconfiguration %v", documented, keys)
	}
}
