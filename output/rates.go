package output

import (
	"fmt"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/threads"
)

// topPods is how many pods the text views rank.
const topPods = 10

// spikeJSON is {"event":"spike"}: a pod starting or stopping to spike.
type spikeJSON struct {
	Time      time.Time  `json:"time"`
	Event     string     `json:"event"`
	State     string     `json:"state"` // start, stop
	Pod       *kube.Pod  `json:"pod,omitempty"`
	Owner     string     `json:"owner,omitempty"`
	Cgroup    string     `json:"cgroup"`
	Reason    string     `json:"reason,omitempty"` // leak, burst, headroom
	Rate      float64    `json:"rate"`             // creations/s, last second
	Baseline  float64    `json:"baseline"`         // the pod's usual creations/s
	NetGrowth float64    `json:"net_growth"`       // (creations − exits)/s, last 10 s
	Tasks     int64      `json:"tasks"`            // pids.current of the pod, -1 unknown
	Limit     *limitJSON `json:"limit,omitempty"`  // nearest limit above the pod
	// Threads: at the start, the pod's largest groups of threads, the
	// growing first.
	Threads *[]threads.Group `json:"threads,omitempty"`
}

type limitJSON struct {
	Name     string `json:"name"`
	Headroom int64  `json:"headroom"`
}

type podRatesJSON struct {
	Pod       *kube.Pod  `json:"pod,omitempty"`
	Owner     string     `json:"owner,omitempty"`
	Cgroup    string     `json:"cgroup"`
	Rate1s    float64    `json:"rate_1s"`
	Rate10s   float64    `json:"rate_10s"`
	Rate60s   float64    `json:"rate_60s"`
	Net1s     float64    `json:"net_1s"`
	Net10s    float64    `json:"net_10s"`
	Net60s    float64    `json:"net_60s"`
	P50       float64    `json:"p50"`
	P99       float64    `json:"p99"`
	Max       float64    `json:"max"`
	Tasks     int64      `json:"tasks"`
	Limit     *limitJSON `json:"limit,omitempty"`
	Spiking   bool       `json:"spiking"`
	Reason    string     `json:"reason,omitempty"`
	ThreadsCr uint64     `json:"threads_created"`
	ProcsCr   uint64     `json:"processes_created"`
	ThreadsEx uint64     `json:"threads_exited"`
	ProcsEx   uint64     `json:"processes_exited"`
	// Threads: a spiking pod's largest groups of threads, the growing first.
	Threads *[]threads.Group `json:"threads,omitempty"`
}

type ratesJSON struct {
	Time      time.Time       `json:"time"`
	Event     string          `json:"event"`
	Node      nodeJSON        `json:"node"`
	Pods      []podRatesJSON  `json:"pods"`
	Forecasts []node.Forecast `json:"forecasts"`
}

type nodeJSON struct {
	PidMax     int64 `json:"pid_max"`
	ThreadsMax int64 `json:"threads_max"`
	Tasks      int64 `json:"tasks"`
}

func limitOf(ps *node.PodStats) *limitJSON {
	if ps.Limit == nil {
		return nil
	}
	return &limitJSON{Name: ps.Limit.Name, Headroom: ps.Limit.Headroom}
}

// Rates writes spike transitions at once and, when periodic, a rates object.
func (j *JSON) Rates(s *node.Snapshot, periodic bool) error {
	for _, tr := range s.Transitions {
		p := &tr.Pod
		state := "stop"
		if tr.Start {
			state = "start"
		}
		if err := j.enc.Encode(spikeJSON{
			Time: s.Time, Event: "spike", State: state, Pod: p.Pod, Owner: p.Owner, Cgroup: p.Cgroup,
			Reason: p.Reason, Rate: p.Rate1s, Baseline: p.Baseline, NetGrowth: p.Net10s,
			Tasks: p.Tasks, Limit: limitOf(p), Threads: groupsJSON(p.Threads),
		}); err != nil {
			return err
		}
	}
	if !periodic {
		return nil
	}
	out := ratesJSON{Time: s.Time, Event: "rates", Forecasts: s.Forecasts, Pods: []podRatesJSON{},
		Node: nodeJSON{PidMax: s.Node.PidMax, ThreadsMax: s.Node.ThreadsMax, Tasks: s.Node.Tasks}}
	for i := range s.Pods {
		p := &s.Pods[i]
		out.Pods = append(out.Pods, podRatesJSON{
			Pod: p.Pod, Owner: p.Owner, Cgroup: p.Cgroup,
			Rate1s: p.Rate1s, Rate10s: p.Rate10s, Rate60s: p.Rate60s,
			Net1s: p.Net1s, Net10s: p.Net10s, Net60s: p.Net60s,
			P50: p.P50, P99: p.P99, Max: p.Max, Tasks: p.Tasks, Limit: limitOf(p),
			Spiking: p.Spiking, Reason: p.Reason,
			ThreadsCr: p.Totals.ThreadsCreated, ProcsCr: p.Totals.ProcessesCreated,
			ThreadsEx: p.Totals.ThreadsExited, ProcsEx: p.Totals.ProcessesExited,
			Threads: groupsJSON(p.Threads),
		})
	}
	return j.enc.Encode(out)
}

// Rates prints spike transitions as they happen and, when periodic, a
// ranked summary laid out for pipedWidth columns; on a terminal (Live) it
// redraws a top-like view every second instead, fitted to the terminal,
// with the latest failures and spikes below it.
func (t *Text) Rates(s *node.Snapshot, periodic bool) error {
	t.noteLeaks(s)
	if t.Live {
		for _, tr := range s.Transitions {
			t.remember(spikeLine(s.Time, &tr, true))
		}
		return t.redraw(s)
	}
	for _, tr := range s.Transitions {
		t.w.WriteString(spikeLine(s.Time, &tr, false).String() + "\n")
	}
	if periodic {
		t.w.WriteString(s.Time.Format("15:04:05") + "  tasks created, by pod:\n")
		for _, l := range podTable(s, pipedWidth, topPods) {
			t.w.WriteString(l + "\n")
		}
		for _, l := range limitTable(s, pipedWidth, topLimits) {
			t.w.WriteString(l + "\n")
		}
	}
	return t.w.Flush()
}

// spikeLine renders a pod starting or stopping to spike, e.g.
//
//	14:02:05  SPIKE  shop/cart-7d9  leak: 300/s created (usual 12/s), net +280/s (usual +0/s), 4120 tasks, 52 left under /kubepods; growing: pool-*-thread-* ×3,960 (+280/s) in java[4121]
//
// A pod's own limit is "pod pids.max"; other cgroups are named in full, or
// short for the live view.
func spikeLine(at time.Time, tr *node.SpikeTransition, short bool) eventLine {
	p := &tr.Pod
	l := eventLine{head: at.Format("15:04:05") + "  SPIKE  ", who: Who(p.Cgroup, p.Who)}
	if !tr.Start {
		l.head = at.Format("15:04:05") + "  SPIKE OVER  "
		l.tail = fmt.Sprintf("  now %s/s, net %s/s", num(p.Rate1s), signed(p.Net10s))
		return l
	}
	l.tail = fmt.Sprintf("  %s: %s/s created (usual %s/s), net %s/s (usual %s/s)",
		p.Reason, num(p.Rate1s), num(p.Baseline), signed(p.Net10s), signed(p.BaselineGrowth))
	if p.Tasks >= 0 {
		l.tail += fmt.Sprintf(", %d tasks", p.Tasks)
	}
	if p.Limit != nil {
		name := p.Limit.Name
		if short || name == p.Cgroup {
			name = limitName(p.Limit.Name, p.Cgroup, 40)
		}
		l.tail += fmt.Sprintf(", %d left under %s", p.Limit.Headroom, name)
	}
	if len(p.Threads) > 0 {
		l.leak = "; " + growingText(p.Threads[0])
	}
	return l
}
