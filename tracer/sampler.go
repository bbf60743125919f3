package tracer

import (
	"sort"
	"time"

	"github.com/forkwatch/forkwatch/tracer/kube"
	"github.com/forkwatch/forkwatch/tracer/limits"
	"github.com/forkwatch/forkwatch/tracer/rates"
)

// PodStats is one pod's (or, outside pods, one cgroup's) creation rates,
// task count and nearest limit.
type PodStats struct {
	rates.Stats
	Who
	Cgroup string // the pod's cgroup (or the cgroup itself outside pods)
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

// Snapshot is what the sampler saw in one second.
type Snapshot struct {
	Time        time.Time
	Node        limits.Node
	Pods        []PodStats // fastest creators first
	Forecasts   []Forecast // every limit that matters, soonest exhaustion first
	Transitions []SpikeTransition
}

// SpikeTransition is a pod starting or stopping to spike.
type SpikeTransition struct {
	Start bool
	Pod   PodStats
}

// Sampler reads the kernel's per-cgroup counters once a second and turns
// them into per-pod rates, spikes and forecasts.
type Sampler struct {
	tracer  *Tracer
	root    CgroupRoot
	paths   *CgroupPaths
	attr    *Attributor
	tracker *rates.Tracker
	procfs  string

	// per-limit history of "current" for growth over 10 s
	growth map[string]*[growthWindow]int64
	seen   map[string]int
	whos   map[string]PodStats
	// each pod cgroup's pids files as last read: reused while the pod
	// creates and ends nothing (its count cannot have moved but by a task
	// moved in or out, or a new pids.max), re-read at least every podReread.
	pods map[string]podPids
}

type podPids struct {
	pids   limits.Pids
	err    error
	counts rates.Counts
	read   time.Time
}

// podReread bounds how stale an idle pod's pids.current and pids.max may be.
const podReread = 10 * time.Second

const growthWindow = 11 // samples: 10 s of growth

// NewSampler returns a sampler over t's counters; paths names the cgroups of
// the hierarchy mounted at root.
func NewSampler(t *Tracer, root CgroupRoot, paths *CgroupPaths, attr *Attributor, cfg rates.Config) *Sampler {
	return &Sampler{
		tracer: t, root: root, paths: paths, attr: attr,
		tracker: rates.NewTracker(cfg), procfs: "/proc",
		growth: map[string]*[growthWindow]int64{}, seen: map[string]int{},
		pods: map[string]podPids{},
	}
}

// Sample reads the counters now. Call it once a second.
func (s *Sampler) Sample(now time.Time) (Snapshot, error) {
	counts, err := s.tracer.TaskCounts()
	if err != nil {
		return Snapshot{}, err
	}
	node, err := limits.ReadNode(s.procfs)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Time: now, Node: node}

	// Group the cgroups' counters by pod.
	type group struct {
		who    Who
		cgroup string
		counts rates.Counts
	}
	groups := map[string]*group{}
	for id, c := range counts {
		path, ok := s.paths.Path(id)
		if !ok {
			continue // removed before it could be named: its pod's rate loses it
		}
		info := kube.ParseCgroupPath(path)
		key, cg := path, path
		if info.PodUID != "" {
			key, cg = "pod:"+info.PodUID, info.PodCgroup
		}
		g, ok := groups[key]
		if !ok {
			g = &group{who: s.attr.Resolve(cg), cgroup: cg}
			g.who.ContainerID = ""
			groups[key] = g
		}
		g.counts.ThreadsCreated += c.ThreadsCreated
		g.counts.ProcessesCreated += c.ProcessesCreated
		g.counts.ThreadsExited += c.ThreadsExited
		g.counts.ProcessesExited += c.ProcessesExited
	}

	// Each pod's tasks and nearest limit; the limits above pods are
	// forecast too.
	nodeHeadroom := &rates.Limit{Name: "pid_max", Headroom: node.PidMax - node.Tasks}
	if th := node.ThreadsMax - node.Tasks; th < nodeHeadroom.Headroom {
		nodeHeadroom = &rates.Limit{Name: "threads_max", Headroom: th}
	}
	s.forecast(&snap, "pid_max", node.Tasks, node.PidMax)
	s.forecast(&snap, "threads_max", node.Tasks, node.ThreadsMax)
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
	for key, g := range groups {
		sample := rates.Sample{Counts: g.counts, Tasks: -1, Limit: nodeHeadroom}
		if g.who.Pod != nil {
			chain, _ := reader.Ancestors(g.cgroup)
			if len(chain) > 0 {
				sample.Tasks = chain[0].Current
			}
			if near, ok := limits.Nearest(chain); ok && near.Max-near.Current < nodeHeadroom.Headroom {
				sample.Limit = &rates.Limit{Name: near.Path, Headroom: near.Max - near.Current}
			}
			for _, p := range chain {
				if p.Max >= 0 && !forecasted[p.Path] {
					forecasted[p.Path] = true
					s.forecast(&snap, p.Path, p.Current, p.Max)
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
	return snap, nil
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
