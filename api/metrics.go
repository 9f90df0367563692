package api

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// collector turns a Counters snapshot into Prometheus metrics at each
// scrape. Device counters come from each device's Stats, whatever its
// kind: every number in it (nested objects flattened with "_") becomes
// govmd_<kind>_<field> with labels index and name, untyped (a Stats holds
// counters and states, such as negotiated features, side by side).
type collector struct {
	vm      VM
	version string
}

var (
	descUp        = prometheus.NewDesc("govmd_vm_uptime_seconds", "How long the VM has run (paused time included).", nil, nil)
	descState     = prometheus.NewDesc("govmd_vm_state", "1 for the VM's current state.", []string{"state"}, nil)
	descBuild     = prometheus.NewDesc("govmd_build_info", "govmd's version.", []string{"version"}, nil)
	descExits     = prometheus.NewDesc("govmd_vcpu_exits_total", "vCPU exits handled by govmd, by reason.", []string{"vcpu", "reason"}, nil)
	descKVM       = prometheus.NewDesc("govmd_vcpu_kvm_stat", "KVM's own statistics of a vCPU (KVM_GET_STATS_FD).", []string{"vcpu", "stat"}, nil)
	descBoot      = prometheus.NewDesc("govmd_boot_milestone_seconds", "When the guest reached a boot milestone, since the VMM started.", []string{"milestone"}, nil)
	descFaults    = prometheus.NewDesc("govmd_device_transport_faults_total", "Driver mistakes the virtio PCI transport saw.", []string{"kind", "index", "name"}, nil)
	descNotifs    = prometheus.NewDesc("govmd_device_notifications_total", "Used-buffer notifications sent, by queue.", []string{"kind", "index", "name", "queue"}, nil)
	descNICLinkUp = prometheus.NewDesc("govmd_nic_link_up", "1 while the NIC's link is up.", []string{"index", "name"}, nil)
)

// Describe implements prometheus.Collector. It sends only the fixed
// descriptors: the device metrics depend on the devices, which makes this
// an unchecked collector for them.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descState, descBuild, descExits, descKVM, descBoot, descFaults, descNotifs, descNICLinkUp} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	emit(ch, descUp, prometheus.GaugeValue, c.vm.Uptime().Seconds())
	emit(ch, descState, prometheus.GaugeValue, 1, string(c.vm.State()))
	emit(ch, descBuild, prometheus.GaugeValue, 1, c.version)
	for _, n := range c.vm.NICs() {
		up := 0.0
		if n.LinkUp {
			up = 1
		}
		emit(ch, descNICLinkUp, prometheus.GaugeValue, up, strconv.Itoa(n.Index), n.Name)
	}
	cs := c.vm.Counters()
	for _, v := range cs.VCPUs {
		id := strconv.Itoa(v.ID)
		for r, n := range v.Exits {
			emit(ch, descExits, prometheus.CounterValue, float64(n), id, r)
		}
		for s, n := range v.KVM {
			emit(ch, descKVM, prometheus.UntypedValue, float64(n), id, s)
		}
	}
	for m, ms := range cs.Boot {
		emit(ch, descBoot, prometheus.GaugeValue, ms/1000, m)
	}
	descs := map[string]*prometheus.Desc{}
	for _, d := range cs.Devices {
		idx := strconv.Itoa(d.Index)
		emit(ch, descFaults, prometheus.CounterValue, float64(d.TransportFaults), d.Kind, idx, d.Name)
		for q, n := range d.Notifications {
			emit(ch, descNotifs, prometheus.CounterValue, float64(n), d.Kind, idx, d.Name, strconv.Itoa(q))
		}
		for _, f := range Flatten(d.Stats) {
			name := "govmd_" + metricName(d.Kind) + "_" + f.Name
			desc, ok := descs[name]
			if !ok {
				desc = prometheus.NewDesc(name, "A "+d.Kind+" device's counter "+f.Name+" (see GET /vm/counters).", []string{"index", "name"}, nil)
				descs[name] = desc
			}
			emit(ch, desc, prometheus.UntypedValue, f.Value, idx, d.Name)
		}
	}
}

// emit sends one metric. Label values are made valid UTF-8 (a disk's path
// need not be); a metric that still cannot be made is sent as invalid,
// which the scrape reports, instead of panicking.
func emit(ch chan<- prometheus.Metric, desc *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) {
	for i, l := range labels {
		labels[i] = strings.ToValidUTF8(l, "\uFFFD")
	}
	m, err := prometheus.NewConstMetric(desc, typ, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(desc, err)
	}
	ch <- m
}

// Stat is one number of a device's Stats, flattened (see Flatten).
type Stat struct {
	Name  string
	Value float64
}

// Flatten returns every number and boolean in a device's Stats (as
// its JSON encoding has them), named in snake case with nested names
// joined by "_", sorted by name.
func Flatten(stats any) []Stat {
	b, err := json.Marshal(stats)
	if err != nil {
		return nil
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil
	}
	var out []Stat
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case float64:
			if prefix != "" {
				out = append(out, Stat{prefix, x})
			}
		case bool:
			if prefix != "" {
				f := 0.0
				if x {
					f = 1
				}
				out = append(out, Stat{prefix, f})
			}
		case map[string]any:
			for k, e := range x {
				n := metricName(k)
				if prefix != "" {
					n = prefix + "_" + n
				}
				walk(n, e)
			}
		}
	}
	walk("", v)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

var (
	camelBoundary = regexp.MustCompile(`([a-z0-9])([A-Z])`)
	notMetricChar = regexp.MustCompile(`[^a-zA-Z0-9_]+`)
)

// metricName makes a Prometheus metric name part of s: TxPackets ->
// tx_packets, rx-bytes -> rx_bytes.
func metricName(s string) string {
	s = camelBoundary.ReplaceAllString(s, "${1}_${2}")
	s = notMetricChar.ReplaceAllString(s, "_")
	return strings.Trim(strings.ToLower(s), "_")
}

// newMetricsHandler serves vm's metrics in the Prometheus text format.
func newMetricsHandler(vm VM, version string, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{vm: vm, version: version})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	})
}
