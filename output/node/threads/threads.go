// Package threads says what is leaking in a pod: its live threads grouped
// by process and by thread name, every run of decimal digits folded to "*",
// counted, and followed over 10 s so that the growing group comes first.
//
// The kernel keeps TASK_COMM_LEN-1 = 15 bytes of a thread's name
// (pthread_setname_np, prctl PR_SET_NAME, a JVM naming its threads): a
// JVM's pool-3-thread-1234 reads back as pool-3-thread-1, pool-12-thread-5
// as pool-12-thread-. Folding makes both pool-*-thread-*: a name of 15
// bytes may have lost its end, which is folded to "*" too. A thread nobody
// named keeps the name of the thread that created it, usually the
// process's own (Go's threads, a plain pthread_create): those group under
// the process's name, unfolded.
package threads

import (
	"cmp"
	"slices"
	"time"
)

// CommLen is how many bytes of a task's name the kernel keeps
// (TASK_COMM_LEN, 16, with its NUL).
const CommLen = 15

// Top is how many groups a pod's summary carries in the spike and rates
// objects and the live view.
const Top = 5

// Fold appends name to dst with every run of ASCII decimal digits replaced
// by one "*". A name of CommLen bytes may have been cut by the kernel: it
// ends in "*" whatever followed.
func Fold(dst, name []byte) []byte {
	digits := false
	for _, c := range name {
		if c >= '0' && c <= '9' {
			if !digits {
				dst = append(dst, '*')
			}
			digits = true
			continue
		}
		digits = false
		dst = append(dst, c)
	}
	if len(name) >= CommLen && !digits {
		dst = append(dst, '*')
	}
	return dst
}

// Group is one process's live threads of one folded name.
type Group struct {
	Name  string `json:"name"` // folded, e.g. pool-*-thread-*; the process's name for threads never named
	Comm  string `json:"comm"` // the process's name (/proc/PID/comm)
	PID   int    `json:"pid"`
	Count int    `json:"count"`
	// Growth is the change in Count over the last 10 s (Span): less for
	// a pod read for less long, more for one read less often than every
	// second.
	Growth int           `json:"growth_10s"`
	Span   time.Duration `json:"-"`
}

// PerSecond is the group's growth per second over Span (0 without one).
func (g Group) PerSecond() float64 {
	if g.Span <= 0 {
		return 0
	}
	return float64(g.Growth) / g.Span.Seconds()
}

// Rank orders groups as they are shown: the fastest growing first (the
// leak), then the largest.
func Rank(groups []Group) {
	slices.SortFunc(groups, func(a, b Group) int {
		if c := cmp.Compare(b.Growth, a.Growth); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		if c := cmp.Compare(a.PID, b.PID); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

// Reading is one read of a set of processes: their groups, unranked and
// without growth.
type Reading struct {
	Groups    []Group
	Threads   int // live threads read
	Processes int
}

// Reset empties the reading, keeping its storage.
func (r *Reading) Reset() {
	r.Groups = r.Groups[:0]
	r.Threads, r.Processes = 0, 0
}

// Window is how far back a group's growth looks.
const Window = 10 * time.Second

// window is how many readings a pod's history keeps: 10 s at one a second.
const window = 11

type key struct {
	pid        int
	comm, name string
}

type podHistory struct {
	n      int               // readings so far; the latest is at (n-1)%window
	times  [window]time.Time // when each was taken
	groups map[key]*[window]int32
	seen   uint64 // the History round it was last observed in
}

// History follows pods' groups from one reading to the next, for their
// growth. A pod not observed in a round is forgotten at its end: its next
// reading starts a new history.
type History struct {
	pods  map[string]*podHistory
	round uint64
}

// NewHistory returns an empty history.
func NewHistory() *History { return &History{pods: map[string]*podHistory{}, round: 1} }

// Observe records a pod's reading taken at now and returns its groups with
// their growth, ranked. The reading's groups are copied.
func (h *History) Observe(pod string, now time.Time, rd *Reading) []Group {
	p, ok := h.pods[pod]
	if !ok {
		p = &podHistory{groups: map[key]*[window]int32{}}
		h.pods[pod] = p
	}
	p.seen = h.round
	i := p.n % window
	p.times[i] = now
	for k, ring := range p.groups {
		ring[i] = 0
		if allZero(ring) {
			delete(p.groups, k)
		}
	}
	for _, g := range rd.Groups {
		k := key{g.PID, g.Comm, g.Name}
		ring, ok := p.groups[k]
		if !ok {
			ring = new([window]int32)
			p.groups[k] = ring
		}
		ring[i] += int32(g.Count)
	}
	// Growth is against the oldest reading of the last 10 s, or the one
	// before this when the pod is read less often (see Sampler).
	span := 0
	for k := 1; k <= min(p.n, window-1); k++ {
		if k == 1 || now.Sub(p.times[(p.n-k)%window]) <= Window+Window/20 {
			span = k
		}
	}
	j := (p.n - span) % window
	p.n++
	out := make([]Group, 0, len(rd.Groups))
	for k, ring := range p.groups {
		if ring[i] == 0 {
			continue // gone: a group is shown while it has live threads
		}
		g := Group{Name: k.name, Comm: k.comm, PID: k.pid, Count: int(ring[i])}
		if span > 0 {
			g.Growth, g.Span = int(ring[i]-ring[j]), now.Sub(p.times[j])
		}
		out = append(out, g)
	}
	Rank(out)
	return out
}

func allZero(ring *[window]int32) bool {
	for _, v := range ring {
		if v != 0 {
			return false
		}
	}
	return true
}

// Keep keeps a pod's history through this round without a reading.
func (h *History) Keep(pod string) {
	if p, ok := h.pods[pod]; ok {
		p.seen = h.round
	}
}

// EndRound forgets the pods neither observed nor kept since the last
// EndRound.
func (h *History) EndRound() {
	for pod, p := range h.pods {
		if p.seen != h.round {
			delete(h.pods, pod)
		}
	}
	h.round++
}

// Len is how many pods the history follows.
func (h *History) Len() int { return len(h.pods) }
