package rates

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 4, 14, 0, 0, 0, time.UTC)

// sim drives a tracker with pods whose creations/exits per second are given
// by functions of the second.
type sim struct {
	tr     *Tracker
	counts map[string]Counts
	now    time.Time
	starts map[string]time.Time // first spike start seen
	stops  map[string]time.Time
}

func newSim() *sim {
	return &sim{tr: NewTracker(DefaultConfig), counts: map[string]Counts{}, now: t0,
		starts: map[string]time.Time{}, stops: map[string]time.Time{}}
}

type rateFn func(sec int) (created, exited uint64)

func (s *sim) run(seconds int, pods map[string]rateFn, limits map[string]*Limit) {
	for sec := 0; sec < seconds; sec++ {
		samples := map[string]Sample{}
		for key, fn := range pods {
			c, e := fn(sec)
			cnt := s.counts[key]
			cnt.ThreadsCreated += c
			cnt.ThreadsExited += e
			s.counts[key] = cnt
			samples[key] = Sample{Counts: cnt, Tasks: -1, Limit: limits[key]}
		}
		s.now = s.now.Add(time.Second)
		for _, tr := range s.tr.Observe(s.now, samples) {
			if tr.Start {
				if _, ok := s.starts[tr.Stats.Key]; !ok {
					s.starts[tr.Stats.Key] = tr.Time
				}
			} else {
				s.stops[tr.Stats.Key] = tr.Time
			}
		}
	}
}

func steady(rate uint64) rateFn { return func(int) (uint64, uint64) { return rate, rate } }

// A worker pool creating and reaping 5000 threads/s is busy, not leaking.
func TestSteadyWorkerPoolNeverFlagged(t *testing.T) {
	s := newSim()
	s.run(120, map[string]rateFn{"pool": steady(5000)}, nil)
	if at, ok := s.starts["pool"]; ok {
		t.Fatalf("worker pool flagged at %v", at.Sub(t0))
	}
}

// Seed 003: an application starts leaking threads mid-run. It is flagged
// within 5 s of the start of its leak, next to a pool that never is.
func TestLeakFlaggedWithinFiveSeconds(t *testing.T) {
	s := newSim()
	const leakStart = 40
	leaker := func(sec int) (uint64, uint64) {
		if sec >= leakStart {
			return 300, 20 // 280 threads/s never reaped
		}
		return 50, 50
	}
	s.run(80, map[string]rateFn{"pool": steady(5000), "leaker": leaker}, nil)
	at, ok := s.starts["leaker"]
	if !ok {
		t.Fatal("leaker never flagged")
	}
	// Second leakStart is observed at t0+leakStart+1s.
	if d := at.Sub(t0.Add(leakStart * time.Second)); d < 0 || d > 5*time.Second {
		t.Fatalf("leaker flagged %v after its leak began, want within 5s", d)
	}
	if _, ok := s.starts["pool"]; ok {
		t.Fatal("worker pool flagged")
	}
	st := s.tr.Snapshot()
	var leak Stats
	for _, x := range st {
		if x.Key == "leaker" {
			leak = x
		}
	}
	if !leak.Spiking || leak.Reason != "leak" || leak.Net10s != 280 {
		t.Fatalf("leaker stats %+v", leak)
	}
}

// A service starting its pool (200 threads in one second, then idle) is not
// a leak: the rule wants SustainSeconds of it.
func TestOneOffBurstNotFlagged(t *testing.T) {
	s := newSim()
	startup := func(sec int) (uint64, uint64) {
		if sec == 20 {
			return 200, 0
		}
		return 1, 1
	}
	s.run(60, map[string]rateFn{"svc": startup}, nil)
	if _, ok := s.starts["svc"]; ok {
		t.Fatal("a one-off startup burst was flagged")
	}
}

// Creations jumping far above the pod's own baseline are a burst even when
// the threads are reaped; the flag drops once it calms down.
func TestBurstFlaggedAndCleared(t *testing.T) {
	s := newSim()
	burst := func(sec int) (uint64, uint64) {
		if sec >= 30 && sec < 40 {
			return 20000, 20000
		}
		return 100, 100
	}
	s.run(70, map[string]rateFn{"batch": burst}, nil)
	start, ok := s.starts["batch"]
	if !ok {
		t.Fatal("burst not flagged")
	}
	stop, ok := s.stops["batch"]
	if !ok || !stop.After(start) {
		t.Fatalf("burst flagged at %v, cleared at %v (%v)", start, stop, ok)
	}
}

// Slow growth toward a nearby limit is flagged because of the headroom,
// the same growth far from any limit is not.
func TestHeadroomRule(t *testing.T) {
	grow := func(int) (uint64, uint64) { return 6, 1 } // 5 tasks/s, below MinGrowth
	near := newSim()
	near.run(30, map[string]rateFn{"p": grow}, map[string]*Limit{"p": {Name: "/kubepods", Headroom: 1000}})
	if _, ok := near.starts["p"]; !ok {
		t.Fatal("growth that exhausts /kubepods in 200 s not flagged")
	}
	far := newSim()
	far.run(30, map[string]rateFn{"p": grow}, map[string]*Limit{"p": {Name: "/kubepods", Headroom: 1_000_000}})
	if _, ok := far.starts["p"]; ok {
		t.Fatal("growth with days of headroom flagged")
	}
}

func TestRatesAndHistogram(t *testing.T) {
	s := newSim()
	n := 0
	s.run(61, map[string]rateFn{"p": func(int) (uint64, uint64) {
		n++
		if n%2 == 0 {
			return 3, 0
		}
		return 1000, 1000
	}}, nil)
	st := s.tr.Snapshot()[0]
	if st.Rate1s != 3 && st.Rate1s != 1000 {
		t.Fatalf("Rate1s = %v", st.Rate1s)
	}
	if st.Rate10s != 501.5 || st.Max != 1000 || st.P50 != 3 || st.P99 != 1000 {
		t.Fatalf("stats %+v", st)
	}
	if st.Histogram.Count != 60 || st.Histogram.Counts[2] != 30 /* le 5 */ || st.Histogram.Counts[9] != 30 /* le 1000 */ {
		t.Fatalf("histogram %+v", st.Histogram)
	}
}

// A counter that goes backwards (the kernel map's LRU evicted the cgroup)
// is a restart, not a negative rate.
func TestCounterResetIsNotNegative(t *testing.T) {
	tr := NewTracker(DefaultConfig)
	tr.Observe(t0, map[string]Sample{"p": {Counts: Counts{ThreadsCreated: 1000}}})
	tr.Observe(t0.Add(time.Second), map[string]Sample{"p": {Counts: Counts{ThreadsCreated: 5}}})
	if st := tr.Snapshot()[0]; st.Rate1s != 0 {
		t.Fatalf("rate after reset = %v", st.Rate1s)
	}
	tr.Observe(t0.Add(2*time.Second), map[string]Sample{"p": {Counts: Counts{ThreadsCreated: 15}}})
	if st := tr.Snapshot()[0]; st.Rate1s != 10 {
		t.Fatalf("rate after reset = %v, want 10", st.Rate1s)
	}
}

// Pods that disappear are forgotten, so memory follows the live pods.
func TestGonePodsForgotten(t *testing.T) {
	tr := NewTracker(DefaultConfig)
	tr.Forget = 5 * time.Second
	tr.Observe(t0, map[string]Sample{"gone": {}, "live": {}})
	for i := 1; i <= 10; i++ {
		tr.Observe(t0.Add(time.Duration(i)*time.Second), map[string]Sample{"live": {}})
	}
	if st := tr.Snapshot(); len(st) != 1 || st[0].Key != "live" {
		t.Fatalf("snapshot %+v", st)
	}
}

func TestSecondsLeft(t *testing.T) {
	if s, ok := SecondsLeft(1000, 50); !ok || s != 20 {
		t.Fatalf("SecondsLeft(1000, 50) = %v, %v", s, ok)
	}
	if _, ok := SecondsLeft(1000, 0); ok {
		t.Fatal("no growth has a forecast")
	}
	if s, ok := SecondsLeft(-3, 5); !ok || s != 0 {
		t.Fatalf("exhausted = %v, %v", s, ok)
	}
}
