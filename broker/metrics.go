package broker

import (
	"cmp"
	"net/http"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	promcollectors "github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokend/tokend/api"
)

// leaseSeries bounds the per-lease series: the leases running the most
// jobs get a series each, by name (leases of one name add up), and the
// rest add up under the name "_other". A scrape so carries at most
// leaseSeries+1 series per lease metric however many builds run, and
// names, not lease IDs, so a name that builds again reuses its series.
const leaseSeries = 16

// otherLeases names the series of the leases beyond leaseSeries.
const otherLeases = "_other"

// metrics exports the broker in Prometheus' text format: what Status
// shows, read at each scrape, and counts of the decisions recorded as
// events, kept as they happen.
type metrics struct {
	registry      *prometheus.Registry
	admissions    prometheus.Counter
	admissionWait prometheus.Histogram
	freezes       prometheus.Counter
	thaws         prometheus.Counter
	oomKills      prometheus.Counter
	reclaims      prometheus.Counter
	decisions     *prometheus.CounterVec
	budgetChanges *prometheus.CounterVec
}

func newMetrics(b *Broker) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		admissions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_admissions_total", Help: "Leases admitted after waiting for a job slot (tokenctl run, nix builds with the setup hook).",
		}),
		admissionWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tokend_admission_wait_seconds", Help: "How long admitted leases waited for their first job slot.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10), // 10 ms to 44 min
		}),
		freezes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_freezes_total", Help: "Leases the memory brake froze.",
		}),
		thaws: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_thaws_total", Help: "Leases the memory brake thawed.",
		}),
		oomKills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_oom_kills_total", Help: "Jobs of leases the kernel's OOM killer killed, as recorded (oom-kill events).",
		}),
		reclaims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_reclaims_total", Help: "Times tokend wrote off the tokens of a lease's dead clients.",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_controller_decisions_total", Help: "Changes of the memory controller's target, by its reason (headroom, growth reserve, pressure, cpu cap).",
		}, []string{"reason"}),
		budgetChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_budget_changes_total", Help: "Changes of the budget, by the reason of the new budget.",
		}, []string{"reason"}),
	}
	m.registry.MustRegister(m.admissions, m.admissionWait, m.freezes, m.thaws, m.oomKills, m.reclaims, m.decisions, m.budgetChanges,
		statusCollector{b},
		promcollectors.NewProcessCollector(promcollectors.ProcessCollectorOpts{}),
		promcollectors.NewGoCollector())
	b.events.observe(m.count)
	return m
}

// count counts one recorded event.
func (m *metrics) count(e api.Event) {
	switch e.Kind {
	case api.EventAdmit:
		m.admissions.Inc()
		m.admissionWait.Observe(e.Wait.Seconds())
	case api.EventFreeze:
		m.freezes.Inc()
	case api.EventThaw:
		m.thaws.Inc()
	case api.EventOOMKill:
		m.oomKills.Add(float64(e.Kills))
	case api.EventReclaim:
		m.reclaims.Inc()
	case api.EventDecision:
		m.decisions.WithLabelValues(e.Reason).Inc()
	case api.EventBudget:
		m.budgetChanges.WithLabelValues(e.Reason).Inc()
	}
}

// MetricsHandler serves the metrics (GET /metrics on the control socket,
// and on metrics_listen when configured).
func (b *Broker) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(b.metrics.registry, promhttp.HandlerOpts{ErrorLog: b.log.StandardLogger(nil)})
}

// statusCollector reads Status at each scrape, so the values are those
// of one moment and are kept nowhere twice.
type statusCollector struct{ b *Broker }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descBudget       = desc("tokend_budget_jobs", "Jobs the host may run at once, implicit slots included.")
	descBudgetReason = desc("tokend_budget_reason", "1 for the reason of the current budget: config, operator, cpu count, or the memory controller's.", "reason")
	descAllowance    = desc("tokend_allowance_tokens", "Most tokens that may be handed out: the budget less one implicit slot per active lease.")
	descGranted      = desc("tokend_tokens_granted", "Tokens granted to all leases.")
	descHeld         = desc("tokend_tokens_held", "Granted tokens held by build clients (not in their FIFOs).")
	descDebt         = desc("tokend_tokens_debt", "Granted tokens over the allowance, kept as jobs return them.")
	descLeases       = desc("tokend_leases", "Leases by state (running, waiting, starting, not joined, ending; frozen ones count as frozen).", "state")
	descReclaimed    = desc("tokend_tokens_reclaimed_total", "Tokens leaked by dead clients, written off and put back in the budget.")
	descReissued     = desc("tokend_tokens_reissued_total", "Tokens held beyond the jobs a lease ran, above its share while others waited, written off and handed to the waiting leases.")
	descUnreturned   = desc("tokend_tokens_reissued_unreturned", "Reissued tokens that clients still hold.")
	descTrimmed      = desc("tokend_tokens_trimmed_total", "Excess tokens taken out of FIFOs that held more than they were granted.")
	descViolations   = desc("tokend_accounting_errors_total", "Accounting invariants tokend found broken in itself; anything but 0 is a bug.")

	descLimit      = desc("tokend_memory_limit_bytes", "The memory domain's size.")
	descHeadroom   = desc("tokend_memory_headroom_bytes", "What the memory domain can still take.")
	descWorkingSet = desc("tokend_memory_working_set_bytes", "The memory domain's working set: in use, less inactive file pages.")
	descReserve    = desc("tokend_memory_reserve_bytes", "Headroom never handed out.")
	descGrowth     = desc("tokend_memory_growth_bytes", "What running jobs are still expected to grow by.")
	descNextJob    = desc("tokend_memory_next_job_bytes", "The expected peak of one more job.")
	descSome       = desc("tokend_memory_pressure_some_ratio", "PSI memory some-stall share of the last window.")
	descFull       = desc("tokend_memory_pressure_full_ratio", "PSI memory full-stall share of the last window.")
	descJobs       = desc("tokend_memory_jobs", "Jobs running: implicit slots of admitted leases plus tokens held.")
	descFit        = desc("tokend_memory_fit_jobs", "Jobs memory allows now, those running included.")
	descCPUCap     = desc("tokend_memory_cpu_cap_jobs", "Most jobs the CPUs justify.")
	descTarget     = desc("tokend_memory_target_jobs", "The budget the memory controller wants: what memory would allow while the budget is fixed.")

	descLeaseHeld    = desc("tokend_lease_tokens_held", "Tokens held by the leases of a name (at most 16 names; the rest as _other).", "name")
	descLeaseGranted = desc("tokend_lease_tokens_granted", "Tokens granted to the leases of a name (at most 16 names; the rest as _other).", "name")
	descLeaseJobs    = desc("tokend_lease_jobs", "Jobs the leases of a name run (at most 16 names; the rest as _other).", "name")
	descLeaseRSS     = desc("tokend_lease_rss_bytes", "Resident memory of the leases of a name (at most 16 names; the rest as _other).", "name")
)

// leaseStates are the values of tokend_leases' state label, every one
// reported at each scrape so a state's series never vanishes.
var leaseStates = []string{api.StateRunning, api.StateWaiting, api.StateStarting, api.StateNotJoined, api.StateEnding, "frozen"}

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descBudget, descBudgetReason, descAllowance, descGranted, descHeld, descDebt, descLeases, descReclaimed, descReissued, descUnreturned, descTrimmed, descViolations,
		descLimit, descHeadroom, descWorkingSet, descReserve, descGrowth, descNextJob, descSome, descFull, descJobs, descFit, descCPUCap, descTarget,
		descLeaseHeld, descLeaseGranted, descLeaseJobs, descLeaseRSS,
	} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.b.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(descBudget, float64(st.Budget))
	gauge(descBudgetReason, 1, st.BudgetReason)
	gauge(descAllowance, float64(st.Allowance))
	gauge(descGranted, float64(st.Granted))
	gauge(descDebt, float64(st.Debt))
	counter(descReclaimed, float64(st.ReclaimedTotal))
	counter(descReissued, float64(st.ReissuedTotal))
	counter(descTrimmed, float64(st.InflatedTotal))
	counter(descViolations, float64(st.InvariantViolations))
	held := 0
	states := map[string]int{}
	unreturned := 0
	for _, l := range st.Leases {
		held += l.Held
		unreturned += l.Reissued
		s := l.State
		if l.Memory != nil && l.Memory.Frozen && !l.Ending {
			s = "frozen"
		}
		states[s]++
	}
	gauge(descHeld, float64(held))
	gauge(descUnreturned, float64(unreturned))
	for _, s := range leaseStates {
		gauge(descLeases, float64(states[s]), s)
	}
	if m := st.Memory; m != nil {
		gauge(descLimit, float64(m.Limit))
		gauge(descHeadroom, float64(m.Headroom))
		gauge(descWorkingSet, float64(m.WorkingSet))
		gauge(descReserve, float64(m.Reserve))
		gauge(descGrowth, float64(m.Growth))
		gauge(descNextJob, float64(m.NextJob))
		gauge(descSome, m.PressureSome)
		gauge(descFull, m.PressureFull)
		gauge(descJobs, float64(m.Jobs))
		gauge(descFit, float64(m.Fit))
		gauge(descCPUCap, float64(m.CPUCap))
		gauge(descTarget, float64(m.Target))
	}
	for _, s := range byName(st.Leases) {
		gauge(descLeaseHeld, float64(s.held), s.name)
		gauge(descLeaseGranted, float64(s.granted), s.name)
		gauge(descLeaseJobs, float64(s.jobs), s.name)
		gauge(descLeaseRSS, float64(s.rss), s.name)
	}
}

// nameSeries is what the leases of one name add up to.
type nameSeries struct {
	name                string
	held, granted, jobs int
	rss                 uint64
}

// byName adds the leases up by name, the ones running the most jobs
// first, and folds all but leaseSeries of them into otherLeases.
func byName(leases []api.LeaseStatus) []nameSeries {
	index := map[string]int{}
	var out []nameSeries
	for _, l := range leases {
		name := api.Printable(l.Name)
		if name == otherLeases {
			name = strconv.Quote(name) // the series of the rest keeps its name
		}
		i, ok := index[name]
		if !ok {
			i = len(out)
			index[name] = i
			out = append(out, nameSeries{name: name})
		}
		s := &out[i]
		s.held += l.Held
		s.granted += l.Granted
		if m := l.Memory; m != nil {
			s.jobs += m.Jobs
			s.rss += m.RSS
		}
	}
	slices.SortStableFunc(out, func(a, b nameSeries) int {
		return cmp.Or(cmp.Compare(b.jobs, a.jobs), cmp.Compare(b.held, a.held), cmp.Compare(a.name, b.name))
	})
	if len(out) <= leaseSeries {
		return out
	}
	other := nameSeries{name: otherLeases}
	for _, s := range out[leaseSeries:] {
		other.held += s.held
		other.granted += s.granted
		other.jobs += s.jobs
		other.rss += s.rss
	}
	return append(out[:leaseSeries], other)
}
