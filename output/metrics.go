package output

import (
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forkwatch/forkwatch/tracer"
	"github.com/forkwatch/forkwatch/tracer/kube"
	"github.com/forkwatch/forkwatch/tracer/limits"
	"github.com/forkwatch/forkwatch/tracer/rates"
)

// Version is forkwatch's version, set at build time.
var Version = "dev"

// podSeriesGrace is how long the series of a pod that is gone stay: long
// enough for Prometheus to scrape the last increments, short enough that
// memory follows the pods on the node, not their churn.
const podSeriesGrace = 5 * time.Minute

// maxOwnerSeries bounds the failure series of callers outside pods (one per
// systemd unit or session scope that failed to fork).
const maxOwnerSeries = 1000

// Source is what the metrics read from the tracer at scrape time.
type Source interface {
	TaskCounts() (map[uint64]tracer.TaskCounts, error)
	EventsLost() (uint64, error)
	MissedRuns() map[string]uint64
	Mode() tracer.Mode
	Attached() []tracer.Attachment
}

// Metrics is a Prometheus collector over forkwatch's kernel maps (read at
// scrape time), the failures it was handed and the latest per-pod sample.
// It is also a Writer, so it sits beside the text or JSON output.
type Metrics struct {
	src   Source
	root  tracer.CgroupRoot
	paths *tracer.CgroupPaths
	attr  *tracer.Attributor
	now   func() time.Time

	mu           sync.Mutex
	failures     map[failureKey]*failureSeries
	snap         *tracer.Snapshot
	podSeen      map[string]time.Time // pod UID → last time a cgroup of it was seen
	scrapeErrors uint64
}

type failureKey struct {
	namespace, pod, container, cause, limitCgroup string
}

type failureSeries struct {
	count  uint64
	podUID string
	last   time.Time
}

// NewMetrics returns the collector; paths names the cgroups of the hierarchy
// mounted at root.
func NewMetrics(src Source, root tracer.CgroupRoot, paths *tracer.CgroupPaths, attr *tracer.Attributor) *Metrics {
	return &Metrics{
		src: src, root: root, paths: paths, attr: attr, now: time.Now,
		failures: map[failureKey]*failureSeries{}, podSeen: map[string]time.Time{},
	}
}

var (
	labelsPod       = []string{"namespace", "pod", "container"}
	descFailures    = prometheus.NewDesc("forkwatch_fork_failures_total", "Failed fork/clone/vfork/clone3 calls, by calling pod and container, the limit that refused them (cause) and, for pids_cgroup, the refusing cgroup.", append(labelsPod, "cause", "limit_cgroup"), nil)
	descDenied      = prometheus.NewDesc("forkwatch_fork_denied_total", "fork/clone/vfork/clone3 calls refused by policy (EPERM or EACCES: seccomp, an LSM, a missing capability), by calling pod and container. Not a limit: not in forkwatch_fork_failures_total.", labelsPod, nil)
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
	descLost        = prometheus.NewDesc("forkwatch_events_lost_total", "Events the kernel could not hand over because the ring buffer was full.", nil, nil)
	descMissedRuns  = prometheus.NewDesc("forkwatch_program_runs_missed_total", "Runs of a BPF program the kernel skipped because it was already running on that CPU (kernels 5.12+ count them): failures, creations or exits not seen.", []string{"program"}, nil)
	descAttached    = prometheus.NewDesc("forkwatch_probe_attached", "1 for each BPF program attached, with its hook and the mode it belongs to.", []string{"program", "hook", "mode"}, nil)
	descBuild       = prometheus.NewDesc("forkwatch_build_info", "forkwatch's version and Go version.", []string{"version", "goversion"}, nil)
	descScrapeErr   = prometheus.NewDesc("forkwatch_scrape_errors_total", "Errors reading the kernel's maps or the cgroup files at scrape time.", nil, nil)
)

// Describe sends the descriptors of every metric.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFailures, descDenied, descCreated, descExited, descRate, descPidsCurrent, descPidsMax,
		descPidMax, descThreadsMax, descTasks, descExhaustion, descLeak, descLost, descMissedRuns, descAttached, descBuild, descScrapeErr} {
		ch <- d
	}
}

// Collect reads the maps and files now.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	fail := func(err error) bool {
		if err != nil {
			m.scrapeErrors++
		}
		return err != nil
	}

	// Creations and exits, per container, from the kernel's counters.
	if counts, err := m.src.TaskCounts(); !fail(err) {
		type key struct{ ns, pod, ctr string }
		sums := map[key]tracer.TaskCounts{}
		for id, c := range counts {
			path, ok := m.paths.Path(id)
			if !ok {
				continue
			}
			w := m.attr.Resolve(path)
			// Tasks outside pods add up in the series with empty labels.
			k := key{ctr: shortID(w.ContainerID)}
			if w.Pod != nil {
				k.ns, k.pod = w.Pod.Namespace, podName(w.Pod)
				m.podSeen[w.Pod.UID] = now
			}
			s := sums[k]
			s.ThreadsCreated += c.ThreadsCreated
			s.ProcessesCreated += c.ProcessesCreated
			s.ThreadsExited += c.ThreadsExited
			s.ProcessesExited += c.ProcessesExited
			sums[k] = s
		}
		for k, s := range sums {
			ch <- prometheus.MustNewConstMetric(descCreated, prometheus.CounterValue, float64(s.ThreadsCreated), k.ns, k.pod, k.ctr, "thread")
			ch <- prometheus.MustNewConstMetric(descCreated, prometheus.CounterValue, float64(s.ProcessesCreated), k.ns, k.pod, k.ctr, "process")
			ch <- prometheus.MustNewConstMetric(descExited, prometheus.CounterValue, float64(s.ThreadsExited), k.ns, k.pod, k.ctr, "thread")
			ch <- prometheus.MustNewConstMetric(descExited, prometheus.CounterValue, float64(s.ProcessesExited), k.ns, k.pod, k.ctr, "process")
		}
	}

	// Failures, as handed over by the event reader; series of pods gone
	// for longer than the grace period are dropped.
	for k, s := range m.failures {
		if s.podUID != "" && now.Sub(maxTime(m.podSeen[s.podUID], s.last)) > podSeriesGrace {
			delete(m.failures, k)
			continue
		}
		if k.cause == string(tracer.CauseDenied) {
			ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(s.count), k.namespace, k.pod, k.container)
			continue
		}
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(s.count), k.namespace, k.pod, k.container, k.cause, k.limitCgroup)
	}
	for uid, seen := range m.podSeen {
		if now.Sub(seen) > podSeriesGrace {
			delete(m.podSeen, uid)
		}
	}

	// The latest per-second sample: rate histograms, leak suspects, forecasts.
	if s := m.snap; s != nil {
		for i := range s.Pods {
			p := &s.Pods[i]
			if p.Pod == nil {
				continue
			}
			ch <- prometheus.MustNewConstHistogram(descRate, p.Histogram.Count, p.Histogram.Sum, cumulative(p.Histogram), p.Pod.Namespace, podName(p.Pod))
			if p.Spiking {
				ch <- prometheus.MustNewConstMetric(descLeak, prometheus.GaugeValue, 1, p.Pod.Namespace, podName(p.Pod), p.Reason)
			}
		}
		for _, f := range s.Forecasts {
			if f.HasForecast {
				ch <- prometheus.MustNewConstMetric(descExhaustion, prometheus.GaugeValue, f.SecondsLeft, f.Limit)
			}
		}
	}

	if node, err := limits.ReadNode("/proc"); !fail(err) {
		ch <- prometheus.MustNewConstMetric(descPidMax, prometheus.GaugeValue, float64(node.PidMax))
		ch <- prometheus.MustNewConstMetric(descThreadsMax, prometheus.GaugeValue, float64(node.ThreadsMax))
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(node.Tasks))
	}
	if tree, err := limits.Tree(m.root.Path, 4); !fail(err) {
		for _, p := range tree {
			if !boundsPods(p.Path) {
				continue
			}
			if p.Current >= 0 {
				ch <- prometheus.MustNewConstMetric(descPidsCurrent, prometheus.GaugeValue, float64(p.Current), p.Path)
			}
			if p.Max >= 0 {
				ch <- prometheus.MustNewConstMetric(descPidsMax, prometheus.GaugeValue, float64(p.Max), p.Path)
			}
		}
	}
	if lost, err := m.src.EventsLost(); !fail(err) {
		ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lost))
	}
	for prog, n := range m.src.MissedRuns() {
		ch <- prometheus.MustNewConstMetric(descMissedRuns, prometheus.CounterValue, float64(n), prog)
	}
	for _, a := range m.src.Attached() {
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 1, a.Program, a.Hook, string(a.Mode))
	}
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, Version, runtime.Version())
	ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.CounterValue, float64(m.scrapeErrors))
}

// boundsPods reports whether a cgroup is one whose pids.max bounds pods:
// the root, kubepods (either driver), its QoS classes, or a pod.
func boundsPods(path string) bool {
	if path == "/" {
		return true
	}
	info := kube.ParseCgroupPath(path)
	if info.PodUID != "" {
		return info.PodCgroup == path
	}
	switch info.Owner {
	case "kubepods", "kubepods.slice", "burstable", "besteffort", "kubepods-burstable.slice", "kubepods-besteffort.slice":
		return true
	}
	return false
}

func cumulative(h rates.Histogram) map[float64]uint64 {
	out := make(map[float64]uint64, len(rates.Buckets))
	var sum uint64
	for i, b := range rates.Buckets {
		sum += h.Counts[i]
		out[b] = sum
	}
	return out
}

// podName is the pod's name, or its UID when kubelet's log directory did
// not name it.
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

// Attached is a no-op: the attachments are read at scrape time.
func (m *Metrics) Attached(tracer.Mode, []tracer.Attachment) error { return nil }

// Failure counts one failure.
func (m *Metrics) Failure(f *tracer.Failure) error {
	k := failureKey{container: shortID(f.ContainerID), cause: string(f.Cause)}
	uid := ""
	if f.Pod != nil {
		k.namespace, k.pod, uid = f.Pod.Namespace, podName(f.Pod), f.Pod.UID
	}
	if f.Limit != nil {
		k.limitCgroup = f.Limit.Cgroup
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.failures[k]
	if !ok {
		if uid == "" && m.ownerSeries() >= maxOwnerSeries {
			return nil
		}
		s = &failureSeries{podUID: uid}
		m.failures[k] = s
	}
	s.count++
	s.last = m.now()
	return nil
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

// Task is a no-op: creations and exits are counted in the kernel.
func (m *Metrics) Task(*tracer.TaskEvent) error { return nil }

// EventsLost is a no-op: the kernel's counter is read at scrape time.
func (m *Metrics) EventsLost(time.Time, uint64, uint64) error { return nil }

// Rates keeps the latest sample for the next scrape.
func (m *Metrics) Rates(s *tracer.Snapshot, _ bool) error {
	m.mu.Lock()
	m.snap = s
	m.mu.Unlock()
	return nil
}

// Flush is a no-op.
func (m *Metrics) Flush(time.Time) error { return nil }

// Close is a no-op.
func (m *Metrics) Close() error { return nil }

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

func (t Tee) Attached(mode tracer.Mode, a []tracer.Attachment) error {
	return t.each(func(w Writer) error { return w.Attached(mode, a) })
}
func (t Tee) Failure(f *tracer.Failure) error {
	return t.each(func(w Writer) error { return w.Failure(f) })
}
func (t Tee) Task(ev *tracer.TaskEvent) error {
	return t.each(func(w Writer) error { return w.Task(ev) })
}
func (t Tee) EventsLost(at time.Time, delta, total uint64) error {
	return t.each(func(w Writer) error { return w.EventsLost(at, delta, total) })
}
func (t Tee) Rates(s *tracer.Snapshot, periodic bool) error {
	return t.each(func(w Writer) error { return w.Rates(s, periodic) })
}
func (t Tee) Flush(now time.Time) error { return t.each(func(w Writer) error { return w.Flush(now) }) }
func (t Tee) Close() error              { return t.each(func(w Writer) error { return w.Close() }) }
