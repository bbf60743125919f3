package node

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/output/node/rates"
	"github.com/forkwatch/forkwatch/output/node/threads"
	"github.com/forkwatch/forkwatch/tracer"
)

// PodStats is one pod's (or, outside pods, one cgroup's) creation rates,
// task count and nearest limit.
type PodStats struct {
	rates.Stats
	Who
	Cgroup string // the pod's cgroup (or the cgroup itself outside pods)
	// Threads are a flagged pod's largest groups of live threads, the
	// growing first (at most threads.Top); empty when none is left. Nil
	// for other pods.
	Threads []threads.Group
}

// PodThreads is every group of a pod's live threads, the growing first.
type PodThreads struct {
	Who
	Cgroup    string
	Threads   int // live threads read
	Processes int
	Groups    []threads.Group
}

// ContainerCounts are the creations and exits of one container (Who has
// its pod and container ID) or, outside pods, of all tasks together (Who
// empty): the kernel's per-cgroup counters summed.
type ContainerCounts struct {
	Who
	Counts tracer.TaskCounts
}

// Forecast is one limit's headroom and, at the current net growth, when it
// runs out.
type Forecast struct {
	Limit       string  `json:"limit"` // pid_max, threads_max, or a cgroup path
	Current     int64   `json:"current"`
	Max         int64   `json:"max"`
	Growth      float64 `json:"growth"`                 // net tasks/s over the last 10 s
	SecondsLeft float64 `json:"seconds_left,omitempty"` // only with HasForecast
	HasForecast bool    `json:"-"`
}

// Snapshot is the node as the sampler saw it in one second: everything the
// text, JSON and metrics outputs render besides the events themselves.
type Snapshot struct {
	Time       time.Time
	Node       limits.Node
	Pods       []PodStats        // fastest creators first
	Containers []ContainerCounts // every container seen, and the tasks outside pods
	// Cgroups are the pids cgroups that bound pods: the root, kubepods, its
	// QoS classes and each pod, by path.
	Cgroups     []limits.Pids
	Forecasts   []Forecast // every limit that matters, soonest exhaustion first
	Transitions []SpikeTransition
	// Tailed are the threads of the pods set with Sampler.Tail.
	Tailed []PodThreads
	// EventsLost is the kernel's count of records it could not hand over
	// (see tracer.EventsLost); MissedRuns its skipped program runs.
	EventsLost uint64
	MissedRuns map[string]uint64
	// Errors counts, since start, what the sampler could not read (a
	// kernel map, a proc or cgroup file); Err is the latest.
	Errors uint64
	Err    error
}

// SpikeTransition is a pod starting or stopping to spike.
type SpikeTransition struct {
	Start bool
	Pod   PodStats
}

// Kernel is what the sampler reads from, and hands to, the tracer.
type Kernel interface {
	TaskCounts() (map[uint64]tracer.TaskCounts, error)
	EventsLost() (uint64, error)
	MissedRuns() map[string]uint64
	SetNodeLimits(pidMax, threadsMax int64) error
}

// Sampler owns the model of the node: once a second it turns the kernel's
// counters, the cgroup tree and the pod directory into one Snapshot.
type Sampler struct {
	kernel  Kernel
	root    CgroupRoot
	paths   *CgroupPaths
	attr    *Attributor
	tracker *rates.Tracker
	procfs  string
	errors  uint64

	// per-limit history of "current" for growth over 10 s
	growth map[string]*[growthWindow]int64
	seen   map[string]int
	whos   map[string]PodStats
	// each pod cgroup's pids files as last read: reused while the pod
	// creates and ends nothing (its count cannot have moved but by a task
	// moved in or out, or a new pids.max), re-read at least every podReread.
	pods map[string]podPids

	// The threads of flagged and tailed pods, read from /proc.
	threads *threads.History
	reader  threads.Reader
	reading threads.Reading
	// each pod's latest reading, kept while it is flagged, hot or tailed
	threadsRead   map[string]*threadsRead
	tailed        []string // pod UIDs
	threadsBudget float64  // see defaultThreadsBudget
}

type podPids struct {
	pids   limits.Pids
	err    error
	counts tracer.TaskCounts
	read   time.Time
}

// podReread bounds how stale an idle pod's pids.current and pids.max may be.
const podReread = 10 * time.Second

const growthWindow = 11 // samples: 10 s of growth

// NewSampler returns a sampler over the kernel's counters; paths names the
// cgroups of the hierarchy mounted at root.
func NewSampler(k Kernel, root CgroupRoot, paths *CgroupPaths, attr *Attributor, cfg rates.Config) *Sampler {
	return &Sampler{
		kernel: k, root: root, paths: paths, attr: attr,
		tracker: rates.NewTracker(cfg), procfs: "/proc",
		growth: map[string]*[growthWindow]int64{}, seen: map[string]int{},
		pods: map[string]podPids{}, threads: threads.NewHistory(), threadsBudget: defaultThreadsBudget,
	}
}

// Tail sets the pods (by UID) whose threads every snapshot carries in
// Tailed, flagged or not: the --pod tail's.
func (s *Sampler) Tail(uids []string) { s.tailed = uids }

// Sample reads everything now. Call it once a second. What cannot be read
// is counted in the snapshot's Errors and left out; the rest is sampled.
func (s *Sampler) Sample(now time.Time) *Snapshot {
	snap := &Snapshot{Time: now}
	fail := func(what string, err error) bool {
		if err != nil {
			s.errors++
			snap.Err = fmt.Errorf("%s: %w", what, err)
		}
		return err != nil
	}
	defer func() { snap.Errors = s.errors }()

	node, err := limits.ReadNode(s.procfs)
	if !fail("node limits", err) {
		snap.Node = node
		// The kernel side classifies failures against these; it cannot
		// read them itself on every kernel.
		fail("handing the node limits to the kernel", s.kernel.SetNodeLimits(node.PidMax, node.ThreadsMax))
	}
	counts, err := s.kernel.TaskCounts()
	fail("task counters", err)
	lost, err := s.kernel.EventsLost()
	fail("lost-event counters", err)
	snap.EventsLost, snap.MissedRuns = lost, s.kernel.MissedRuns()

	groups, containers := s.group(counts)
	snap.Containers = containers
	s.limitsAndRates(snap, node, groups, fail)
	s.readThreads(snap, fail)
	return snap
}

// readThreads groups the live threads of the pods that are flagged, of
// those a spike condition held for this second (so that a spike starts
// with its growth known), and of the tailed pods. Nothing is read for
// other pods. A pod whose reading took more than threadsBudget of the time
// since it is read again only that much later: its last groups stand
// meanwhile.
func (s *Sampler) readThreads(snap *Snapshot, fail func(string, error) bool) {
	now := snap.Time
	read := make(map[string]*threadsRead, len(s.threadsRead))
	observe := func(key, cgroup string) *threadsRead {
		if r, ok := read[key]; ok {
			return r
		}
		r, ok := s.threadsRead[key]
		if ok && now.Before(r.next) {
			s.threads.Keep(key)
		} else {
			if !ok {
				r = &threadsRead{}
			}
			start := time.Now()
			s.reading.Reset()
			s.reader.Proc = s.procfs
			err := s.reader.Cgroup(filepath.Join(s.root.Path, cgroup), &s.reading)
			fail("the threads of "+cgroup, err)
			r.groups = s.threads.Observe(key, now, &s.reading)
			r.threads, r.processes = s.reading.Threads, s.reading.Processes
			r.next = now.Add(time.Duration(float64(time.Since(start)) / s.threadsBudget))
		}
		read[key] = r
		return r
	}
	top := func(g []threads.Group) []threads.Group {
		return append([]threads.Group{}, g[:min(len(g), threads.Top)]...)
	}
	for i := range snap.Pods {
		p := &snap.Pods[i]
		if p.Pod != nil && (p.Spiking || p.Hot > 0) {
			r := observe(p.Key, p.Cgroup)
			if p.Spiking {
				p.Threads = top(r.groups)
			}
		}
	}
	for i := range snap.Transitions {
		tr := &snap.Transitions[i]
		if r, ok := read[tr.Pod.Key]; ok && tr.Start {
			tr.Pod.Threads = top(r.groups)
		}
	}
	for _, uid := range s.tailed {
		var cgroups []string
		for _, cg := range s.paths.PodCgroups(uid) {
			cgroups = append(cgroups, cg)
		}
		if len(cgroups) == 0 {
			continue // not started yet, or gone
		}
		slices.Sort(cgroups) // one pod, one cgroup: kubelet makes no other
		r := observe("pod:"+uid, cgroups[0])
		snap.Tailed = append(snap.Tailed, PodThreads{
			Who: s.attr.Resolve(cgroups[0]), Cgroup: cgroups[0], Threads: r.threads, Processes: r.processes, Groups: r.groups,
		})
	}
	s.threadsRead = read
	s.threads.EndRound()
	s.reader.EndRound()
}

// defaultThreadsBudget is the share of a core reading one pod's threads may take:
// at 2 µs a thread (make bench), a pod of 10,000 threads is read every
// second, one of 50,000 every 5 s.
const defaultThreadsBudget = 0.02

// threadsRead is a pod's latest reading, and when it is due again.
type threadsRead struct {
	groups             []threads.Group
	threads, processes int
	next               time.Time
}

// group is one pod's (or one cgroup's, outside pods) counts.
type group struct {
	who    Who
	cgroup string
	counts tracer.TaskCounts
}

// group sums the kernel's per-cgroup counters by pod (for the rates) and by
// container (for the metrics); tasks outside pods are one container.
func (s *Sampler) group(counts map[uint64]tracer.TaskCounts) (map[string]*group, []ContainerCounts) {
	groups := map[string]*group{}
	type ctrKey struct{ podUID, id string }
	ctrs := map[ctrKey]*ContainerCounts{}
	for id, c := range counts {
		path, ok := s.paths.Path(id)
		if !ok {
			continue // removed before it could be named: its pod's rate loses it
		}
		who := s.attr.Resolve(path)
		key, cg := path, path
		if who.Pod != nil {
			info := kube.ParseCgroupPath(path)
			key, cg = "pod:"+who.Pod.UID, info.PodCgroup
		}
		g, ok := groups[key]
		if !ok {
			g = &group{who: who, cgroup: cg}
			g.who.ContainerID = ""
			groups[key] = g
		}
		g.counts.Add(c)

		var k ctrKey
		if who.Pod != nil {
			k = ctrKey{who.Pod.UID, who.ContainerID}
		}
		cc, ok := ctrs[k]
		if !ok {
			cc = &ContainerCounts{}
			if who.Pod != nil {
				cc.Who = Who{Pod: who.Pod, ContainerID: who.ContainerID}
			}
			ctrs[k] = cc
		}
		cc.Counts.Add(c)
	}
	out := make([]ContainerCounts, 0, len(ctrs))
	for _, cc := range ctrs {
		out = append(out, *cc)
	}
	sort.Slice(out, func(i, j int) bool { return containerKey(out[i]) < containerKey(out[j]) })
	return groups, out
}

func containerKey(c ContainerCounts) string {
	if c.Pod == nil {
		return ""
	}
	return c.Pod.UID + "/" + c.ContainerID
}

// limitsAndRates reads each pod's tasks and the limits above it, forecasts
// every limit that matters, and feeds the rate tracker.
func (s *Sampler) limitsAndRates(snap *Snapshot, node limits.Node, groups map[string]*group, fail func(string, error) bool) {
	now := snap.Time
	nodeHeadroom := &rates.Limit{Name: "pid_max", Headroom: node.PidMax - node.Tasks}
	if th := node.ThreadsMax - node.Tasks; th < nodeHeadroom.Headroom {
		nodeHeadroom = &rates.Limit{Name: "threads_max", Headroom: th}
	}
	s.forecast(snap, "pid_max", node.Tasks, node.PidMax)
	s.forecast(snap, "threads_max", node.Tasks, node.ThreadsMax)
	forecasted := map[string]bool{}
	samples := make(map[string]rates.Sample, len(groups))
	whos := make(map[string]PodStats, len(groups))
	reader := &limits.Reader{Root: s.root.Path}
	pods := make(map[string]podPids, len(s.pods))
	for _, g := range groups {
		if g.who.Pod == nil {
			continue
		}
		last, ok := s.pods[g.cgroup]
		if !ok || last.counts != g.counts || now.Sub(last.read) >= podReread {
			last.pids, last.err = reader.Read(g.cgroup)
			last.counts, last.read = g.counts, now
		}
		reader.Set(g.cgroup, last.pids, last.err)
		pods[g.cgroup] = last
	}
	s.pods = pods
	bounding := map[string]limits.Pids{}
	if root, err := reader.Read("/"); !fail("the root cgroup's pids files", err) {
		bounding["/"] = root
	}
	for key, g := range groups {
		sample := rates.Sample{Counts: g.counts, Tasks: -1, Limit: nodeHeadroom}
		if g.who.Pod != nil {
			chain, _ := reader.Ancestors(g.cgroup) // a pod gone this second has none
			if len(chain) > 0 {
				sample.Tasks = chain[0].Current
			}
			if near, ok := limits.Nearest(chain); ok && near.Max-near.Current < nodeHeadroom.Headroom {
				sample.Limit = &rates.Limit{Name: near.Path, Headroom: near.Max - near.Current}
			}
			for _, p := range chain {
				if BoundsPods(p.Path) {
					bounding[p.Path] = p
				}
				if p.Max >= 0 && !forecasted[p.Path] {
					forecasted[p.Path] = true
					s.forecast(snap, p.Path, p.Current, p.Max)
				}
			}
		}
		samples[key] = sample
		whos[key] = PodStats{Who: g.who, Cgroup: g.cgroup}
	}
	for key := range s.growth {
		if key != "pid_max" && key != "threads_max" && !forecasted[key] {
			delete(s.growth, key)
			delete(s.seen, key)
		}
	}
	for _, p := range bounding {
		snap.Cgroups = append(snap.Cgroups, p)
	}
	slices.SortFunc(snap.Cgroups, func(a, b limits.Pids) int { return strings.Compare(a.Path, b.Path) })

	for _, tr := range s.tracker.Observe(now, samples) {
		ps := whos[tr.Stats.Key]
		if ps.Cgroup == "" {
			ps = s.whos[tr.Stats.Key] // gone this second: named as last seen
		}
		ps.Stats = tr.Stats
		snap.Transitions = append(snap.Transitions, SpikeTransition{Start: tr.Start, Pod: ps})
	}
	s.whos = whos
	for _, st := range s.tracker.Snapshot() {
		ps, ok := whos[st.Key]
		if !ok {
			continue
		}
		ps.Stats = st
		snap.Pods = append(snap.Pods, ps)
	}
	sort.SliceStable(snap.Forecasts, func(i, j int) bool {
		a, b := snap.Forecasts[i], snap.Forecasts[j]
		if a.HasForecast != b.HasForecast {
			return a.HasForecast
		}
		return a.SecondsLeft < b.SecondsLeft
	})
}

// forecast records a limit's use and adds its forecast to the snapshot.
func (s *Sampler) forecast(snap *Snapshot, name string, current, max int64) {
	h, ok := s.growth[name]
	if !ok {
		h = new([growthWindow]int64)
		s.growth[name] = h
	}
	n := s.seen[name]
	h[n%growthWindow] = current
	s.seen[name] = n + 1
	f := Forecast{Limit: name, Current: current, Max: max}
	if n > 0 {
		span := min(n, growthWindow-1)
		f.Growth = float64(current-h[(n-span)%growthWindow]) / float64(span)
		f.SecondsLeft, f.HasForecast = rates.SecondsLeft(max-current, f.Growth)
	}
	snap.Forecasts = append(snap.Forecasts, f)
}

// BoundsPods reports whether a cgroup is one whose pids.max bounds pods:
// the root, kubepods (either driver), its QoS classes, or a pod.
func BoundsPods(path string) bool {
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

// WithinReach returns the limit nearest to running out among those whose
// headroom is below tracer.PressurePercent of the limit or
// tracer.PressureMin tasks, whichever is larger: what arms the failure
// hooks by pressure from the per-second reading (a limit lowered under a
// cgroup's tasks, a pid_max lowered by sysctl).
func (s *Snapshot) WithinReach() (Forecast, bool) {
	var near Forecast
	found := false
	for _, f := range s.Forecasts {
		if f.Max <= 0 || f.Current <= 0 {
			continue // an empty cgroup refuses nothing until a task arrives
		}
		slack := max(f.Max/100*tracer.PressurePercent, tracer.PressureMin)
		if f.Max-f.Current < slack && (!found || f.Max-f.Current < near.Max-near.Current) {
			near, found = f, true
		}
	}
	return near, found
}
