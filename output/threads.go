package output

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/threads"
	"github.com/forkwatch/forkwatch/tracer"
)

// tailGroups is how many groups the --pod tail's summary shows.
const tailGroups = 20

// groupText renders a group of threads:
//
//	pool-*-thread-* ×1,580 (+120/s) in java[4121]
func groupText(g threads.Group) string {
	s := g.Name + " ×" + thousands(g.Count)
	if g.Span > 0 {
		s += " (" + perSecond(g.PerSecond()) + ")"
	}
	return fmt.Sprintf("%s in %s[%d]", s, g.Comm, g.PID)
}

// growingText names a pod's top group for a spike or failure line:
// "growing: …" while it grows, "largest: …" otherwise.
func growingText(g threads.Group) string {
	if g.Growth > 0 {
		return "growing: " + groupText(g)
	}
	return "largest: " + groupText(g)
}

func perSecond(v float64) string {
	if v != 0 && math.Abs(v) < 1 {
		return fmt.Sprintf("%+.1f/s", v)
	}
	return fmt.Sprintf("%+.0f/s", math.Round(v)+0)
}

// thousands renders 1580 as 1,580.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// groupsJSON is a pod's "threads" array: present (maybe empty) for a
// flagged pod, absent for others.
func groupsJSON(g []threads.Group) *[]threads.Group {
	if g == nil {
		return nil
	}
	return &g
}

// leak is a flagged pod's top group, as the text writer last saw it.
type leak struct {
	who    node.Who
	cgroup string
	net    float64
	top    threads.Group
}

// noteLeaks remembers the flagged pods' top groups, for the failure lines.
func (t *Text) noteLeaks(s *node.Snapshot) {
	t.leaks = t.leaks[:0]
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Spiking && len(p.Threads) > 0 && p.Pod != nil {
			t.leaks = append(t.leaks, leak{who: p.Who, cgroup: p.Cgroup, net: p.Net10s, top: p.Threads[0]})
		}
	}
}

// leakFor names the flagged pod's group most likely behind a failure: the
// caller's own pod if it is flagged, else the fastest-growing flagged pod
// under the limit that refused it (an ancestor pids cgroup such as
// /kubepods, threads-max, the node's pid_max).
func (t *Text) leakFor(f *node.Failure) string {
	var best *leak
	for i := range t.leaks {
		l := &t.leaks[i]
		if f.Pod != nil && l.who.Pod.UID == f.Pod.UID {
			return growingText(l.top)
		}
		under := false
		switch {
		case f.Cause == tracer.CausePidsCgroup && f.Limit != nil:
			under = f.Limit.Cgroup == "/" || l.cgroup == f.Limit.Cgroup || strings.HasPrefix(l.cgroup, f.Limit.Cgroup+"/")
		case f.Cause == tracer.CauseThreadsMax:
			under = true
		case f.Cause == tracer.CausePidMax && f.Limit != nil:
			under = t.HostPIDNamespace != 0 && f.Limit.PIDNamespace == t.HostPIDNamespace
		}
		if under && (best == nil || l.net > best.net) {
			best = l
		}
	}
	if best == nil {
		return ""
	}
	return growingText(best.top) + " (" + Who(best.cgroup, best.who) + ")"
}

// Threads prints the --pod tail's summary of its pod's threads:
//
//	14:02:20  THREADS  shop/cart-7d9: 1,640 threads in 2 processes
//	  pool-*-thread-* ×1,580 (+120/s) in java[4121]
//	  GC Thread#* ×8 (+0/s) in java[4121]
func (t *Text) Threads(s *node.Snapshot) error {
	for _, p := range s.Tailed {
		t.w.WriteString(fmt.Sprintf("%s  THREADS  %s: %s threads in %s\n", s.Time.Format("15:04:05"),
			Who(p.Cgroup, p.Who), thousands(p.Threads), plural(p.Processes, "process", "processes")))
		for i, g := range p.Groups {
			if i == tailGroups {
				rest := 0
				for _, g := range p.Groups[i:] {
					rest += g.Count
				}
				t.w.WriteString(fmt.Sprintf("  … %s more, %s\n", plural(len(p.Groups)-i, "group", "groups"), plural(rest, "thread", "threads")))
				break
			}
			t.w.WriteString("  " + groupText(g) + "\n")
		}
	}
	return t.w.Flush()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return thousands(n) + " " + many
}

// threadsJSON is {"event":"threads"}: the --pod tail's summary.
type threadsJSON struct {
	Time      time.Time       `json:"time"`
	Event     string          `json:"event"`
	Pod       *kube.Pod       `json:"pod,omitempty"`
	Cgroup    string          `json:"cgroup"`
	Threads   int             `json:"live_threads"`
	Processes int             `json:"processes"`
	Groups    []threads.Group `json:"threads"`
}

// Threads writes one threads object per tailed pod: its live threads and
// processes, and its first tailGroups groups, the growing first.
func (j *JSON) Threads(s *node.Snapshot) error {
	for _, p := range s.Tailed {
		g := p.Groups[:min(len(p.Groups), tailGroups)]
		if g == nil {
			g = []threads.Group{}
		}
		if err := j.enc.Encode(threadsJSON{Time: s.Time, Event: "threads", Pod: p.Pod, Cgroup: p.Cgroup,
			Threads: p.Threads, Processes: p.Processes, Groups: g}); err != nil {
			return err
		}
	}
	return nil
}

// Threads: the metrics carry no thread names.
func (m *Metrics) Threads(*node.Snapshot) error { return nil }

func (t Tee) Threads(s *node.Snapshot) error {
	return t.each(func(w Writer) error { return w.Threads(s) })
}
