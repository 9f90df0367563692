package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"

	"github.com/govmd/govmd/vmm"
)

// The configuration file of govmd run --config, and the "config" of the
// API's GET /vm: a JSON object whose keys are run's flags (long names) and
// whose values are what the flags take: strings, a number for cpus,
// booleans for the on/off flags, arrays of the flag's strings for the
// repeatable ones. Flags on the command line override the file (a
// repeatable flag given on the command line replaces the file's list).
// docs/openapi.json's Config schema lists the same keys (a test checks).

type configKind int

const (
	cfgString configKind = iota
	cfgInt
	cfgBool
	cfgList
)

// configKeys are the run flags a configuration holds: the machine, not
// how this govmd is driven (--api-socket, --config).
var configKeys = map[string]configKind{
	"kernel": cfgString, "initrd": cfgString, "cmdline": cfgString, "memory": cfgString,
	"cpus": cfgInt, "cpu-profile": cfgString, "net": cfgList, "disk": cfgList,
	"share": cfgList, "virtiofsd": cfgString, "rng": cfgBool, "shared-memory": cfgBool,
	"confine": cfgBool, "console": cfgString, "hvc": cfgString, "port": cfgList,
	"log-level": cfgString, "guest-profile": cfgString,
}

// maxConfigBytes bounds a configuration file.
const maxConfigBytes = 1 << 20

// applyConfigFile reads the configuration file at path and sets, in fs,
// every flag it names that the command line did not set. Its errors are
// about the file and wrap vmm.ErrConfig.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: --config: %w", vmm.ErrConfig, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return fmt.Errorf("%w: --config %s: %w", vmm.ErrConfig, path, err)
	}
	if len(b) > maxConfigBytes {
		return fmt.Errorf("%w: --config %s: larger than %d bytes", vmm.ErrConfig, path, maxConfigBytes)
	}
	if err := applyConfig(fs, b); err != nil {
		return fmt.Errorf("%w: --config %s: %w", vmm.ErrConfig, path, err)
	}
	return nil
}

// applyConfig sets fs's flags from the configuration b, except those the
// command line set.
func applyConfig(fs *flag.FlagSet, b []byte) error {
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object")
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kind, ok := configKeys[k]
		if !ok || fs.Lookup(k) == nil {
			return fmt.Errorf("unknown field %q", k)
		}
		vals, err := configValues(kind, m[k])
		if err != nil {
			return fmt.Errorf("field %q: %w", k, err)
		}
		if onCommandLine[k] {
			continue
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return fmt.Errorf("field %q: %w", k, err)
			}
		}
	}
	return nil
}

// configValues decodes a field's value as the flag strings to set.
func configValues(kind configKind, raw json.RawMessage) ([]string, error) {
	switch kind {
	case cfgString:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, errors.New("want a string")
		}
		return []string{s}, nil
	case cfgInt:
		var n int
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, errors.New("want an integer")
		}
		return []string{strconv.Itoa(n)}, nil
	case cfgBool:
		var v bool
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, errors.New("want true or false")
		}
		return []string{strconv.FormatBool(v)}, nil
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, errors.New("want an array of strings")
	}
	return l, nil
}

// configOf returns the configuration fs's flags hold, in the schema of
// the configuration file.
func configOf(fs *flag.FlagSet) map[string]any {
	out := map[string]any{}
	for k, kind := range configKeys {
		f := fs.Lookup(k)
		if f == nil {
			continue
		}
		s := f.Value.String()
		switch kind {
		case cfgString:
			out[k] = s
		case cfgInt:
			n, _ := strconv.Atoi(s)
			out[k] = n
		case cfgBool:
			out[k] = s == "on" || s == "true"
		case cfgList:
			l := []string{}
			if lf, ok := f.Value.(*listFlag); ok {
				l = append(l, *lf...)
			}
			out[k] = l
		}
	}
	return out
}
