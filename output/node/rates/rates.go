// Package rates turns forkwatch's cumulative per-cgroup task counters into
// per-pod creation rates, rate histograms and a spike verdict: the pod that
// is leaking threads, named while it is happening.
//
// The spike rule, decided once a second from each pod's own history:
//
//	A pod is spiking when, for SustainSeconds consecutive seconds, one of:
//	 (leak)     its net growth (creations − exits) in the second exceeds
//	            max(MinGrowth, Factor × its baseline growth);
//	 (burst)    its creations in the second exceed max(MinRate, Factor ×
//	            its baseline rate), once it has BaselineMin seconds of
//	            history to compare against;
//	 (headroom) it grows at all and, at its 10 s net growth, the nearest
//	            limit above it runs out within Horizon.
//	It stops spiking after CalmSeconds without any of them.
//
// A pod's baseline is the 90th percentile of its per-second values over the
// minute before the last 5 s (the spike itself must not raise its own
// baseline; while a pod is flagged its baseline stays what it was when the
// spike began, so a leak that goes on is not learnt as normal). Holding for SustainSeconds keeps a one-off burst (a service
// starting its thread pool) from being called a leak. A worker pool that creates and reaps threads at a high but
// constant rate has a high baseline rate and no net growth: it is never
// flagged. A leak is net growth, whatever the rate.
package rates

import (
	"github.com/forkwatch/forkwatch/tracer"
	"math"
	"sort"
	"time"
)

// Config holds the spike rule's knobs.
type Config struct {
	Factor         float64       // how far above its baseline a pod must go (4)
	MinRate        float64       // creations/s below which a burst is never a spike (200)
	MinGrowth      float64       // net tasks/s below which growth is never a leak (20)
	Horizon        time.Duration // flag growth that exhausts a limit within this (10m)
	BaselineMin    int           // seconds of history before bursts are judged (10)
	SustainSeconds int           // consecutive seconds a condition must hold (3)
	CalmSeconds    int           // seconds without one before the flag drops (10)
}

// DefaultConfig is the rule as documented in the README.
var DefaultConfig = Config{
	Factor: 4, MinRate: 200, MinGrowth: 20, Horizon: 10 * time.Minute,
	BaselineMin: 10, SustainSeconds: 3, CalmSeconds: 10,
}

// history is how many per-second samples each pod keeps: the histograms'
// "last minutes" and the baseline's minute.
const history = 300

// Buckets are the upper bounds of the per-second creation-rate histogram:
// 1 to 100k/s, the range between an idle pod and a thread storm on one core.
var Buckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000}

// Counts are cumulative creations and exits, as the kernel counts them.
type Counts = tracer.TaskCounts

// Limit is the nearest limit above a pod, for the headroom rule.
type Limit struct {
	Name     string // e.g. "/kubepods" or "pid_max"
	Headroom int64  // tasks left
}

// Sample is one pod's state at one second.
type Sample struct {
	Counts Counts
	Tasks  int64  // tasks in the pod now (pids.current), -1 if unknown
	Limit  *Limit // nil if none
}

// Stats is one pod's view, as shown and exported.
type Stats struct {
	Key                      string
	Rate1s, Rate10s, Rate60s float64 // creations/s
	Net1s, Net10s, Net60s    float64 // (creations − exits)/s
	Totals                   Counts  // cumulative
	Tasks                    int64
	Limit                    *Limit
	P50, P99, Max            float64 // of the per-second creation rate over the kept history
	Baseline                 float64 // the baseline rate the burst rule compares with
	BaselineGrowth           float64
	Spiking                  bool
	Hot                      int    // consecutive seconds, up to now, a condition held: Spiking from SustainSeconds
	Reason                   string // leak, burst or headroom while spiking
	SpikingSince             time.Time
	Histogram                Histogram
}

// Histogram is the cumulative distribution of a pod's per-second creation
// rates since it was first seen, in Buckets (Prometheus semantics).
type Histogram struct {
	Counts []uint64 // per bucket, not cumulative; last is +Inf
	Sum    float64
	Count  uint64
}

// Transition is a pod starting or stopping to spike.
type Transition struct {
	Time  time.Time
	Start bool
	Stats Stats
}

type pod struct {
	last     Counts
	seen     int       // samples observed
	rates    []float64 // ring of per-second creation rates
	nets     []float64 // ring of per-second net growth
	next     int
	sample   Sample
	hist     Histogram
	hot      int // consecutive seconds a condition held
	calm     int // consecutive seconds none held
	spiking  bool
	frozen   [2]float64 // baseline rate and growth when the spike began
	reason   string
	since    time.Time
	lastSeen time.Time
}

// Tracker follows every pod's counters.
type Tracker struct {
	cfg  Config
	pods map[string]*pod
	// Forget drops pods not observed for this long (their series go too).
	Forget time.Duration
}

// NewTracker returns a tracker with the given rule.
func NewTracker(cfg Config) *Tracker {
	return &Tracker{cfg: cfg, pods: make(map[string]*pod), Forget: 2 * time.Minute}
}

// Observe records one second: every pod's cumulative counts now. Call it once
// a second. It returns the pods that started or stopped spiking.
func (t *Tracker) Observe(now time.Time, samples map[string]Sample) []Transition {
	var out []Transition
	for key, s := range samples {
		p, ok := t.pods[key]
		if !ok {
			p = &pod{last: s.Counts, rates: make([]float64, history), nets: make([]float64, history),
				hist: Histogram{Counts: make([]uint64, len(Buckets)+1)}}
			t.pods[key] = p
			p.sample, p.lastSeen = s, now
			continue // the first sample is the starting point
		}
		// Counters only grow; a smaller value means the kernel's LRU
		// dropped and re-created the cgroup's entry: start over from it.
		created, exited := float64(0), float64(0)
		if s.Counts.Created() >= p.last.Created() && s.Counts.Exited() >= p.last.Exited() {
			created = float64(s.Counts.Created() - p.last.Created())
			exited = float64(s.Counts.Exited() - p.last.Exited())
		}
		p.last, p.sample, p.lastSeen = s.Counts, s, now
		p.rates[p.next], p.nets[p.next] = created, created-exited
		p.next = (p.next + 1) % history
		p.seen++
		p.hist.observe(created)
		if tr, ok := t.judge(now, key, p); ok {
			out = append(out, tr)
		}
	}
	for key, p := range t.pods {
		if now.Sub(p.lastSeen) > t.Forget {
			if p.spiking {
				p.spiking = false
				out = append(out, Transition{Time: now, Start: false, Stats: t.stats(key, p)})
			}
			delete(t.pods, key)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Stats.Key < out[j].Stats.Key })
	return out
}

func (h *Histogram) observe(v float64) {
	i := sort.SearchFloat64s(Buckets, v) // first bound >= v
	h.Counts[i]++
	h.Sum += v
	h.Count++
}

func (t *Tracker) judge(now time.Time, key string, p *pod) (Transition, bool) {
	if !p.spiking {
		p.frozen = [2]float64{p.baseline(p.rates), p.baseline(p.nets)}
	}
	reason := t.condition(p)
	if reason != "" {
		p.hot++
		p.calm = 0
	} else {
		p.hot = 0
		p.calm++
	}
	switch {
	case !p.spiking && p.hot >= t.cfg.SustainSeconds:
		p.spiking, p.reason, p.since = true, reason, now
		return Transition{Time: now, Start: true, Stats: t.stats(key, p)}, true
	case p.spiking && p.calm >= t.cfg.CalmSeconds:
		p.spiking = false
		return Transition{Time: now, Start: false, Stats: t.stats(key, p)}, true
	}
	return Transition{}, false
}

// condition returns why the pod looks like it is spiking this second, or "".
func (t *Tracker) condition(p *pod) string {
	rate, net := p.mean(p.rates, 1), p.mean(p.nets, 1)
	baseRate, baseNet := p.baseline(p.rates), p.baseline(p.nets)
	if p.spiking {
		baseRate, baseNet = p.frozen[0], p.frozen[1]
	}
	if net > math.Max(t.cfg.MinGrowth, t.cfg.Factor*baseNet) {
		return "leak"
	}
	if p.seen-5 >= t.cfg.BaselineMin && rate > math.Max(t.cfg.MinRate, t.cfg.Factor*baseRate) {
		return "burst"
	}
	if l := p.sample.Limit; l != nil {
		if net10 := p.mean(p.nets, 10); net10 > 0 && float64(l.Headroom)/net10 < t.cfg.Horizon.Seconds() {
			return "headroom"
		}
	}
	return ""
}

// mean of the last n per-second values (fewer if the pod is younger).
func (p *pod) mean(ring []float64, n int) float64 {
	if n > p.seen {
		n = p.seen
	}
	if n == 0 {
		return 0
	}
	var sum float64
	for i := 1; i <= n; i++ {
		sum += ring[(p.next-i+history)%history]
	}
	return sum / float64(n)
}

// baseline is the 90th percentile over the minute before the last 5 s.
func (p *pod) baseline(ring []float64) float64 {
	var vals []float64
	for i := 6; i <= 65 && i <= p.seen; i++ {
		vals = append(vals, ring[(p.next-i+history)%history])
	}
	return percentile(vals, 0.90)
}

func percentile(vals []float64, q float64) float64 {
	if len(vals) == 0 {
		return 0
	}
	sort.Float64s(vals)
	return vals[int(math.Ceil(q*float64(len(vals))))-1]
}

func (t *Tracker) stats(key string, p *pod) Stats {
	n := min(p.seen, history)
	kept := make([]float64, 0, n)
	for i := 1; i <= n; i++ {
		kept = append(kept, p.rates[(p.next-i+history)%history])
	}
	s := Stats{
		Key:    key,
		Rate1s: p.mean(p.rates, 1), Rate10s: p.mean(p.rates, 10), Rate60s: p.mean(p.rates, 60),
		Net1s: p.mean(p.nets, 1), Net10s: p.mean(p.nets, 10), Net60s: p.mean(p.nets, 60),
		Totals: p.last, Tasks: p.sample.Tasks, Limit: p.sample.Limit,
		P50: percentile(append([]float64(nil), kept...), 0.50), P99: percentile(append([]float64(nil), kept...), 0.99),
		Baseline: p.frozen[0], BaselineGrowth: p.frozen[1],
		Spiking: p.spiking, Hot: p.hot, SpikingSince: p.since,
		Histogram: Histogram{Counts: append([]uint64(nil), p.hist.Counts...), Sum: p.hist.Sum, Count: p.hist.Count},
	}
	for _, v := range kept {
		s.Max = math.Max(s.Max, v)
	}
	if p.spiking {
		s.Reason = p.reason
	}
	return s
}

// Snapshot returns every pod's stats, the fastest creators first.
func (t *Tracker) Snapshot() []Stats {
	out := make([]Stats, 0, len(t.pods))
	for key, p := range t.pods {
		out = append(out, t.stats(key, p))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Rate10s != out[j].Rate10s {
			return out[i].Rate10s > out[j].Rate10s
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// SecondsLeft is when a limit with this headroom runs out at this net
// growth per second: ok=false when it does not grow.
func SecondsLeft(headroom int64, growth float64) (float64, bool) {
	if growth <= 0 {
		return 0, false
	}
	if headroom <= 0 {
		return 0, true
	}
	return float64(headroom) / growth, true
}
