package main

import (
	"bufio"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Result is one result line of go test -bench.
type Result struct {
	Name    string             // without the -GOMAXPROCS suffix
	N       int64              // iterations
	Metrics map[string]float64 // by unit: ns/op, MB/s, and b.ReportMetric's
}

// Results maps a benchmark's name to its results in the order they were
// printed. make bench runs every benchmark once per round, so the i-th
// results of two benchmarks come from the same round.
type Results map[string][]Result

var procsSuffix = regexp.MustCompile(`-[0-9]+$`)

// Parse reads go test -bench output, possibly the concatenation of several
// runs. Lines that are not result lines (headers, logs, PASS) are skipped.
// Benchmark names must not end in "-<digits>" of their own: that suffix is
// taken for GOMAXPROCS.
func Parse(r io.Reader, into Results) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		res, ok := parseLine(sc.Text())
		if ok {
			into[res.Name] = append(into[res.Name], res)
		}
	}
	return sc.Err()
}

// parseLine parses "BenchmarkName-P  N  v unit  v unit ...".
func parseLine(line string) (Result, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
		return Result{}, false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return Result{}, false
	}
	res := Result{Name: procsSuffix.ReplaceAllString(f[0], ""), N: n, Metrics: map[string]float64{}}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return Result{}, false
		}
		res.Metrics[f[i+1]] = v
	}
	return res, true
}

// Values returns the metric unit of every result of name, in order; NaN
// where a result lacks it.
func (rs Results) Values(name, unit string) []float64 {
	var out []float64
	for _, r := range rs[name] {
		v, ok := r.Metrics[unit]
		if !ok {
			v = math.NaN()
		}
		out = append(out, v)
	}
	return out
}

// Ratios returns, round by round, a's unit over b's unit.
func (rs Results) Ratios(a, b, unit string) []float64 {
	va, vb := rs.Values(a, unit), rs.Values(b, unit)
	var out []float64
	for i := 0; i < len(va) && i < len(vb); i++ {
		out = append(out, va[i]/vb[i])
	}
	return out
}

// Stats summarizes a series: median, minimum and maximum over its finite
// values, and how many there were.
type Stats struct {
	Median, Min, Max float64
	N                int
}

func Summarize(vs []float64) Stats {
	var ok []float64
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return Stats{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	sort.Float64s(ok)
	s := Stats{Min: ok[0], Max: ok[len(ok)-1], N: len(ok)}
	if m := len(ok) / 2; len(ok)%2 == 1 {
		s.Median = ok[m]
	} else {
		s.Median = (ok[m-1] + ok[m]) / 2
	}
	return s
}
