package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokend/tokend/api"
)

// scrape GETs /metrics at url over client and parses it with Prometheus'
// own text parser.
func scrape(t *testing.T, client *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: not Prometheus' text format: %v", url, err)
	}
	return families
}

// value is the value of the series of name whose labels include labels
// ("k", "v", ...); it fails t when there is none.
func value(t *testing.T, families map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := families[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func unixClient(socket string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

// Issue 12: /metrics, on the control socket and on metrics_listen, parses
// as Prometheus' text format and says what status says: the budget and
// its reason, the tokens, leases by state, memory, per-name lease series,
// tokend's own CPU and RSS; admissions and their wait, and the
// controller's decisions, count what the events say happened.
func TestMetricsMatchStatus(t *testing.T) {
	const budget = 4
	d := startDaemonArgs(t, t.TempDir(), "--tokens", fmt.Sprint(budget), "--metrics-listen", "127.0.0.1:0")
	addr := regexp.MustCompile(`serving metrics: address=(\S+)`).FindStringSubmatch(d.logLine(t, "serving metrics"))[1]
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()

	// holder keeps every slot; waiter then waits for admission.
	holder := holdSlots(ctx, t, d, "holder", budget)
	waiter := &build{name: "waiter", argv: []string{"true"}}
	waiter.start(t, d)
	st, _ := d.waitStatus(t, "one lease running, one waiting", func(st api.Status) bool {
		return len(st.Leases) == 2 && st.Leases[0].State == api.StateRunning && st.Leases[1].State == api.StateWaiting &&
			st.Memory != nil && st.Leases[0].Memory != nil
	})

	sock := scrape(t, unixClient(d.sock), "http://tokend/metrics")
	tcp := scrape(t, &http.Client{Timeout: 10 * time.Second}, "http://"+addr+"/metrics")
	st2 := d.status(t)
	for where, m := range map[string]map[string]*dto.MetricFamily{"socket": sock, "metrics_listen": tcp} {
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"tokend_budget_jobs", nil, float64(st.Budget)},
			{"tokend_budget_reason", []string{"reason", "config"}, 1},
			{"tokend_allowance_tokens", nil, float64(st.Allowance)},
			{"tokend_tokens_granted", nil, float64(st.Granted)},
			{"tokend_tokens_held", nil, float64(st.Leases[0].Held + st.Leases[1].Held)},
			{"tokend_tokens_debt", nil, float64(st.Debt)},
			{"tokend_leases", []string{"state", "running"}, 1},
			{"tokend_leases", []string{"state", "waiting"}, 1},
			{"tokend_leases", []string{"state", "frozen"}, 0},
			{"tokend_tokens_reclaimed_total", nil, float64(st.ReclaimedTotal)},
			{"tokend_tokens_trimmed_total", nil, float64(st.InflatedTotal)},
			{"tokend_accounting_errors_total", nil, 0},
			{"tokend_memory_reserve_bytes", nil, float64(st.Memory.Reserve)},
			{"tokend_memory_limit_bytes", nil, float64(st.Memory.Limit)},
			{"tokend_memory_cpu_cap_jobs", nil, float64(st.Memory.CPUCap)},
			{"tokend_lease_tokens_held", []string{"name", "holder"}, float64(st.Leases[0].Held)},
			{"tokend_lease_tokens_granted", []string{"name", "holder"}, float64(st.Leases[0].Granted)},
			{"tokend_lease_tokens_held", []string{"name", "waiter"}, 0},
			{"tokend_admissions_total", nil, 1}, // the holder; the waiter waits
		} {
			if got := value(t, m, c.name, c.labels...); got != c.want {
				t.Errorf("%s: %s%v = %v, status says %v", where, c.name, c.labels, got, c.want)
			}
		}
		if st.Debt != 1 || st.Leases[0].Held != budget-1 {
			t.Errorf("status: debt %d, holder holds %d; want 1 and %d (the waiter's slot is owed)", st.Debt, st.Leases[0].Held, budget-1)
		}
		// Memory moves between two reads; it must be read from the same
		// domain and lie within it.
		if h := value(t, m, "tokend_memory_headroom_bytes"); h <= 0 || h > float64(st.Memory.Limit) {
			t.Errorf("%s: headroom %v outside 0..%d", where, h, st.Memory.Limit)
		}
		if got := value(t, m, "tokend_memory_target_jobs"); got != float64(st.Memory.Target) && got != float64(st2.Memory.Target) {
			t.Errorf("%s: tokend_memory_target_jobs %v, status says %d", where, got, st.Memory.Target)
		}
		if value(t, m, "process_resident_memory_bytes") <= 0 || value(t, m, "process_cpu_seconds_total") <= 0 {
			t.Errorf("%s: tokend's own RSS and CPU missing", where)
		}
	}
	if _, ok := tcp["tokend_leases"]; !ok || len(tcp) != len(sock) {
		t.Errorf("metrics_listen serves %d families, the socket %d", len(tcp), len(sock))
	}

	holder.release(ctx, t)
	if err := waiter.proc.Wait(ctx, t); err != nil {
		t.Fatalf("waiter: %v\n%s", err, waiter.proc.Output())
	}
	d.waitIdle(t)
	evs, err := api.NewClient(d.sock).Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := scrape(t, unixClient(d.sock), "http://tokend/metrics")
	var admits int
	var waited time.Duration
	decisions := map[string]int{}
	for _, e := range evs.Events {
		switch e.Kind {
		case api.EventAdmit:
			admits++
			waited += e.Wait
		case api.EventDecision:
			decisions[e.Reason]++
		}
	}
	if got := value(t, m, "tokend_admissions_total"); got != 2 || admits != 2 {
		t.Errorf("tokend_admissions_total %v, %d admit events; want 2 and 2", got, admits)
	}
	h := m["tokend_admission_wait_seconds"].Metric[0].Histogram
	if h.GetSampleCount() != 2 || fmt.Sprintf("%.6f", h.GetSampleSum()) != fmt.Sprintf("%.6f", waited.Seconds()) {
		t.Errorf("tokend_admission_wait_seconds: %d samples summing to %vs; the admit events waited %v in all", h.GetSampleCount(), h.GetSampleSum(), waited)
	}
	if len(decisions) == 0 || evs.Missed != 0 {
		t.Errorf("no decision events (%d missed)", evs.Missed)
	}
	for reason, n := range decisions {
		if got := value(t, m, "tokend_controller_decisions_total", "reason", reason); got != float64(n) {
			t.Errorf("tokend_controller_decisions_total{reason=%q} = %v, events say %d", reason, got, n)
		}
	}
	t.Logf("scraped %d metric families; %d admissions waited %v; decisions %v", len(m), admits, waited.Round(time.Millisecond), decisions)
}
