package output

import (
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/rates"
	"github.com/forkwatch/forkwatch/tracer"
)

// podSeriesGrace is how long the series of a pod that is gone stay: long
// enough for Prometheus to scrape the last increments, short enough that
// memory follows the pods on the node, not their churn.
const podSeriesGrace = 5 * time.Minute

// maxOwnerSeries bounds the failure series of callers outside pods (one per
// systemd unit or session scope that failed to fork); what is beyond it is
// counted in forkwatch_failure_series_dropped_total.
const maxOwnerSeries = 1000

// Metrics is a Prometheus collector. It renders what is already known — the
// sampler's latest snapshot, the failures the event reader handed over, the
// attachments — and reads no file and no map at scrape time: a slow or
// frequent scrape costs the event reader nothing. It is also a Writer, so
// it sits beside the text or JSON output.
type Metrics struct {
	attached []tracer.Attachment
	version  string
	now      func() time.Time

	// snap is the latest snapshot, replaced whole once a second.
	snapMu sync.Mutex
	snap   *node.Snapshot

	// failures are counted as the reader hands them over; Collect copies
	// them under the same short lock.
	mu            sync.Mutex
	failures      map[failureKey]*failureSeries
	podSeen       map[string]time.Time // pod UID → last snapshot it was in
	droppedSeries uint64
	badRecords    uint64
	hooks         tracer.HooksState
	armings       uint64
}

type failureKey struct {
	namespace, pod, container, cause, limitCgroup string
}

type failureSeries struct {
	count  uint64
	podUID string
	last   time.Time
}

// NewMetrics returns the collector for a tracer attached as attached;
// version is forkwatch's, for forkwatch_build_info.
func NewMetrics(attached []tracer.Attachment, version string) *Metrics {
	return &Metrics{
		attached: attached, version: version, now: time.Now,
		failures: map[failureKey]*failureSeries{}, podSeen: map[string]time.Time{},
	}
}

var (
	labelsPod       = []string{"namespace", "pod", "container"}
	descFailures    = prometheus.NewDesc("forkwatch_fork_failures_total", "Failed fork/clone/vfork/clone3 calls, by calling pod and container, the limit that refused them (cause) and, for pids_cgroup, the refusing cgroup.", append(labelsPod, "cause", "limit_cgroup"), nil)
	descDenied      = prometheus.NewDesc("forkwatch_fork_denied_total", "fork/clone/vfork/clone3 calls refused by policy (EPERM or EACCES: seccomp, an LSM, a missing capability), by calling pod and container, while the failure hooks are attached (forkwatch_failure_hooks_armed). Not a limit: not in forkwatch_fork_failures_total.", labelsPod, nil)
	descCreated     = prometheus.NewDesc("forkwatch_tasks_created_total", "Tasks created (kind thread or process), counted in the kernel per cgroup.", append(labelsPod, "kind"), nil)
	descExited      = prometheus.NewDesc("forkwatch_tasks_exited_total", "Tasks exited (kind thread or process), counted in the kernel per cgroup.", append(labelsPod, "kind"), nil)
	descRate        = prometheus.NewDesc("forkwatch_thread_creation_rate", "Distribution of each pod's per-second task creation rate, one observation per second.", []string{"namespace", "pod"}, nil)
	descPidsCurrent = prometheus.NewDesc("forkwatch_pids_current", "pids.current of the cgroups that bound pods: the root, kubepods, its QoS classes and each pod.", []string{"cgroup"}, nil)
	descPidsMax     = prometheus.NewDesc("forkwatch_pids_max", "pids.max of those cgroups; absent where unlimited.", []string{"cgroup"}, nil)
	descPidMax      = prometheus.NewDesc("forkwatch_node_pid_max", "kernel.pid_max.", nil, nil)
	descThreadsMax  = prometheus.NewDesc("forkwatch_node_threads_max", "kernel.threads-max.", nil, nil)
	descTasks       = prometheus.NewDesc("forkwatch_node_tasks", "Tasks (threads) on the node.", nil, nil)
	descExhaustion  = prometheus.NewDesc("forkwatch_seconds_to_exhaustion", "Seconds until the limit runs out at its net growth over the last 10 s; present while it grows.", []string{"limit"}, nil)
	descLeak        = prometheus.NewDesc("forkwatch_leak_suspect", "1 while a pod is flagged as spiking (leak, burst or headroom; see README).", []string{"namespace", "pod", "reason"}, nil)
	descLost        = prometheus.NewDesc("forkwatch_events_lost_total", "Failures that may have gone unreported: records the kernel could not hand over (a full ring or perf buffer), fork-path returns a kretprobe missed, and skipped runs of the failure programs.", nil, nil)
	descMissedRuns  = prometheus.NewDesc("forkwatch_program_runs_missed_total", "Runs of a BPF program the kernel skipped because it was already running on that CPU (kernels 5.12+ count them): failures, creations or exits not seen.", []string{"program"}, nil)
	descAttached    = prometheus.NewDesc("forkwatch_probe_attached", "1 for each BPF program attached, with its hook and the mode it belongs to; 0 for a failure hook attached on demand while it is not (see forkwatch_failure_hooks_armed).", []string{"program", "hook", "mode"}, nil)
	descHooksArmed  = prometheus.NewDesc("forkwatch_failure_hooks_armed", "1 while the programs that see failed forks are attached, 0 while they wait for a limit to come within reach (policy pressure: tracepoint mode on an always-on forkwatch).", []string{"policy"}, nil)
	descArmings     = prometheus.NewDesc("forkwatch_failure_hooks_armings_total", "Times the failure hooks were attached because a limit came within reach (policy pressure).", nil, nil)
	descBuild       = prometheus.NewDesc("forkwatch_build_info", "forkwatch's version and Go version.", []string{"version", "goversion"}, nil)
	descSampleErr   = prometheus.NewDesc("forkwatch_scrape_errors_total", "Errors reading the kernel's counters or the proc and cgroup files forkwatch samples once a second (what could not be read is missing from that second's series).", nil, nil)
	descBadRecords  = prometheus.NewDesc("forkwatch_records_undecodable_total", "Records from the kernel forkwatch could not decode and skipped (each also a warning on stderr).", nil, nil)
	descDropped     = prometheus.NewDesc("forkwatch_failure_series_dropped_total", "Failures not given a series of their own because callers outside pods already have 1000: counted here instead.", nil, nil)
)

// Describe sends the descriptors of every metric.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFailures, descDenied, descCreated, descExited, descRate, descPidsCurrent, descPidsMax,
		descPidMax, descThreadsMax, descTasks, descExhaustion, descLeak, descLost, descMissedRuns, descAttached, descHooksArmed, descArmings, descBuild,
		descSampleErr, descBadRecords, descDropped} {
		ch <- d
	}
}

// Collect renders the latest snapshot and the failure counts.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.snapMu.Lock()
	s := m.snap
	m.snapMu.Unlock()

	m.collectFailures(ch)
	if s != nil {
		collectSnapshot(ch, s)
	}
	m.mu.Lock()
	hooks, armings := m.hooks, m.armings
	m.mu.Unlock()
	for _, a := range m.attached {
		v := 1.0
		if a.OnDemand && !hooks.Armed {
			v = 0
		}
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, v, a.Program, a.Hook, string(a.Mode))
	}
	armed := 0.0
	if hooks.Armed {
		armed = 1
	}
	ch <- prometheus.MustNewConstMetric(descHooksArmed, prometheus.GaugeValue, armed, string(hooks.Policy))
	ch <- prometheus.MustNewConstMetric(descArmings, prometheus.CounterValue, float64(armings))
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, m.version, runtime.Version())
}

// collectFailures renders the failure and denial counts; series of pods
// gone for longer than the grace period are dropped.
func (m *Metrics) collectFailures(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for k, f := range m.failures {
		if f.podUID != "" && now.Sub(maxTime(m.podSeen[f.podUID], f.last)) > podSeriesGrace {
			delete(m.failures, k)
			continue
		}
		if k.cause == string(tracer.CauseDenied) {
			ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(f.count), k.namespace, k.pod, k.container)
			continue
		}
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(f.count), k.namespace, k.pod, k.container, k.cause, k.limitCgroup)
	}
	for uid, seen := range m.podSeen {
		if now.Sub(seen) > podSeriesGrace {
			delete(m.podSeen, uid)
		}
	}
	ch <- prometheus.MustNewConstMetric(descBadRecords, prometheus.CounterValue, float64(m.badRecords))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(m.droppedSeries))
}

// collectSnapshot renders one second of the node.
func collectSnapshot(ch chan<- prometheus.Metric, s *node.Snapshot) {
	// Containers of a pod recreated under its name (a StatefulSet's), or
	// IDs alike in their first 12 characters, share labels: one series.
	type key struct{ ns, pod, ctr string }
	sums := map[key]tracer.TaskCounts{}
	for _, c := range s.Containers {
		var k key
		if c.Pod != nil {
			k = key{c.Pod.Namespace, podName(c.Pod), shortID(c.ContainerID)}
		}
		sum := sums[k]
		sum.Add(c.Counts)
		sums[k] = sum
	}
	for k, c := range sums {
		ch <- prometheus.MustNewConstMetric(descCreated, prometheus.CounterValue, float64(c.ThreadsCreated), k.ns, k.pod, k.ctr, "thread")
		ch <- prometheus.MustNewConstMetric(descCreated, prometheus.CounterValue, float64(c.ProcessesCreated), k.ns, k.pod, k.ctr, "process")
		ch <- prometheus.MustNewConstMetric(descExited, prometheus.CounterValue, float64(c.ThreadsExited), k.ns, k.pod, k.ctr, "thread")
		ch <- prometheus.MustNewConstMetric(descExited, prometheus.CounterValue, float64(c.ProcessesExited), k.ns, k.pod, k.ctr, "process")
	}

	seenPod := map[[2]string]bool{}
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Pod == nil {
			continue
		}
		labels := [2]string{p.Pod.Namespace, podName(p.Pod)}
		if seenPod[labels] {
			continue // a pod recreated under its name: its newest history
		}
		seenPod[labels] = true
		ch <- prometheus.MustNewConstHistogram(descRate, p.Histogram.Count, p.Histogram.Sum, cumulative(p.Histogram), labels[0], labels[1])
		if p.Spiking {
			ch <- prometheus.MustNewConstMetric(descLeak, prometheus.GaugeValue, 1, labels[0], labels[1], p.Reason)
		}
	}
	for _, f := range s.Forecasts {
		if f.HasForecast {
			ch <- prometheus.MustNewConstMetric(descExhaustion, prometheus.GaugeValue, f.SecondsLeft, f.Limit)
		}
	}
	if s.Node.PidMax > 0 {
		ch <- prometheus.MustNewConstMetric(descPidMax, prometheus.GaugeValue, float64(s.Node.PidMax))
		ch <- prometheus.MustNewConstMetric(descThreadsMax, prometheus.GaugeValue, float64(s.Node.ThreadsMax))
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(s.Node.Tasks))
	}
	for _, p := range s.Cgroups {
		if p.Current >= 0 {
			ch <- prometheus.MustNewConstMetric(descPidsCurrent, prometheus.GaugeValue, float64(p.Current), p.Path)
		}
		if p.Max >= 0 {
			ch <- prometheus.MustNewConstMetric(descPidsMax, prometheus.GaugeValue, float64(p.Max), p.Path)
		}
	}
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(s.EventsLost))
	for prog, n := range s.MissedRuns {
		ch <- prometheus.MustNewConstMetric(descMissedRuns, prometheus.CounterValue, float64(n), prog)
	}
	ch <- prometheus.MustNewConstMetric(descSampleErr, prometheus.CounterValue, float64(s.Errors))
}

// podName is the pod's name, or its UID when kubelet's log directory never
// named it.
func podName(p *kube.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.UID
}

// shortID is the 12-character form of a container ID, as crictl and docker
// print it.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Attached records the failure hooks' state (the attachments were given
// to NewMetrics).
func (m *Metrics) Attached(_ tracer.Mode, _ []tracer.Attachment, hooks tracer.HooksState) error {
	m.mu.Lock()
	m.hooks = hooks
	m.mu.Unlock()
	return nil
}

// FailureHooks records the failure hooks armed or disarmed.
func (m *Metrics) FailureHooks(_ time.Time, hooks tracer.HooksState) error {
	m.mu.Lock()
	if hooks.Armed && !m.hooks.Armed {
		m.armings++
	}
	m.hooks = hooks
	m.mu.Unlock()
	return nil
}

// Failure counts one failure (or denial).
func (m *Metrics) Failure(f *node.Failure) error {
	limit := ""
	if f.Limit != nil {
		limit = f.Limit.Cgroup
	}
	m.addFailures(f.Who, f.Cause, limit, 1)
	return nil
}

// Unseen counts refusals no failure record reported as failures of the
// pids cgroup cause: the alerts and the totals include them.
func (m *Metrics) Unseen(u *node.Unseen) error {
	m.addFailures(u.Who, tracer.CausePidsCgroup, u.LimitCgroup, u.Count)
	return nil
}

func (m *Metrics) addFailures(who node.Who, cause tracer.Cause, limitCgroup string, n uint64) {
	k := failureKey{container: shortID(who.ContainerID), cause: string(cause), limitCgroup: limitCgroup}
	uid := ""
	if who.Pod != nil {
		k.namespace, k.pod, uid = who.Pod.Namespace, podName(who.Pod), who.Pod.UID
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.failures[k]
	if !ok {
		if uid == "" && m.ownerSeries() >= maxOwnerSeries {
			m.droppedSeries++
			return
		}
		s = &failureSeries{podUID: uid}
		m.failures[k] = s
	}
	s.count += n
	s.last = m.now()
}

func (m *Metrics) ownerSeries() int {
	n := 0
	for _, s := range m.failures {
		if s.podUID == "" {
			n++
		}
	}
	return n
}

// BadRecord counts a record the reader could not decode and skipped.
func (m *Metrics) BadRecord() {
	m.mu.Lock()
	m.badRecords++
	m.mu.Unlock()
}

// Task is a no-op: creations and exits are counted in the kernel.
func (m *Metrics) Task(*node.TaskEvent) error { return nil }

// EventsLost is a no-op: the snapshot carries the kernel's count.
func (m *Metrics) EventsLost(time.Time, uint64, uint64) error { return nil }

// Rates keeps the latest snapshot for the next scrape, and notes which
// pods are still there.
func (m *Metrics) Rates(s *node.Snapshot, _ bool) error {
	m.snapMu.Lock()
	m.snap = s
	m.snapMu.Unlock()
	m.mu.Lock()
	for _, c := range s.Containers {
		if c.Pod != nil {
			m.podSeen[c.Pod.UID] = s.Time
		}
	}
	m.mu.Unlock()
	return nil
}

// Flush is a no-op.
func (m *Metrics) Flush(time.Time) error { return nil }

// Close is a no-op.
func (m *Metrics) Close() error { return nil }

func cumulative(h rates.Histogram) map[float64]uint64 {
	out := make(map[float64]uint64, len(rates.Buckets))
	var sum uint64
	for i, b := range rates.Buckets {
		sum += h.Counts[i]
		out[b] = sum
	}
	return out
}

// Tee sends every event to each writer in turn.
type Tee []Writer

func (t Tee) each(f func(Writer) error) error {
	for _, w := range t {
		if err := f(w); err != nil {
			return err
		}
	}
	return nil
}

func (t Tee) Attached(mode tracer.Mode, a []tracer.Attachment, hooks tracer.HooksState) error {
	return t.each(func(w Writer) error { return w.Attached(mode, a, hooks) })
}
func (t Tee) FailureHooks(at time.Time, hooks tracer.HooksState) error {
	return t.each(func(w Writer) error { return w.FailureHooks(at, hooks) })
}
func (t Tee) Failure(f *node.Failure) error {
	return t.each(func(w Writer) error { return w.Failure(f) })
}
func (t Tee) Unseen(u *node.Unseen) error {
	return t.each(func(w Writer) error { return w.Unseen(u) })
}
func (t Tee) Task(ev *node.TaskEvent) error {
	return t.each(func(w Writer) error { return w.Task(ev) })
}
func (t Tee) EventsLost(at time.Time, delta, total uint64) error {
	return t.each(func(w Writer) error { return w.EventsLost(at, delta, total) })
}
func (t Tee) Rates(s *node.Snapshot, periodic bool) error {
	return t.each(func(w Writer) error { return w.Rates(s, periodic) })
}
func (t Tee) Flush(now time.Time) error { return t.each(func(w Writer) error { return w.Flush(now) }) }
func (t Tee) Close() error              { return t.each(func(w Writer) error { return w.Close() }) }
