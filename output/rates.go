package output

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
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
			Tasks: p.Tasks, Limit: limitOf(p),
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
		})
	}
	return j.enc.Encode(out)
}

// Rates prints spike transitions as they happen and, when periodic, a
// ranked summary; on a terminal (Live) it redraws a top-like table every
// second instead, with the latest failures below it.
func (t *Text) Rates(s *node.Snapshot, periodic bool) error {
	if t.Live {
		for _, tr := range s.Transitions {
			t.remember(spikeLine(s.Time, &tr))
		}
		return t.redraw(s)
	}
	for _, tr := range s.Transitions {
		t.w.WriteString(spikeLine(s.Time, &tr) + "\n")
	}
	if periodic {
		t.w.WriteString(s.Time.Format("15:04:05") + "  tasks created, by pod:\n")
		writeTable(t.w, s)
	}
	return t.w.Flush()
}

func spikeLine(at time.Time, tr *node.SpikeTransition) string {
	p := &tr.Pod
	if !tr.Start {
		return fmt.Sprintf("%s  SPIKE OVER  %s  now %s/s, net %+.0f/s", at.Format("15:04:05"), Who(p.Cgroup, p.Who), num(p.Rate1s), p.Net10s)
	}
	line := fmt.Sprintf("%s  SPIKE  %s  %s: %s/s created (usual %s/s), net %+.0f/s (usual %+.0f/s)",
		at.Format("15:04:05"), Who(p.Cgroup, p.Who), p.Reason, num(p.Rate1s), num(p.Baseline), p.Net10s, p.BaselineGrowth)
	if p.Tasks >= 0 {
		line += fmt.Sprintf(", %d tasks", p.Tasks)
	}
	if p.Limit != nil {
		line += fmt.Sprintf(", %d left under %s", p.Limit.Headroom, p.Limit.Name)
	}
	return line
}

// writeTable writes the ranked pods and the limits' forecasts.
func writeTable(w io.StringWriter, s *node.Snapshot) {
	w.WriteString(fmt.Sprintf("  %-40s %8s %8s %8s %8s %8s %8s %8s %7s  %s\n",
		"POD", "NOW/s", "10s", "60s", "NET/s", "p50", "p99", "max", "TASKS", "NEAREST LIMIT"))
	for i := range s.Pods {
		if i == topPods {
			w.WriteString(fmt.Sprintf("  … %d more\n", len(s.Pods)-topPods))
			break
		}
		p := &s.Pods[i]
		name := Who(p.Cgroup, p.Who)
		if p.Spiking {
			name = strings.ToUpper(p.Reason) + " " + name
		}
		tasks, lim := "-", ""
		if p.Tasks >= 0 {
			tasks = fmt.Sprint(p.Tasks)
		}
		if p.Limit != nil {
			lim = fmt.Sprintf("%s (%d left)", p.Limit.Name, p.Limit.Headroom)
		}
		w.WriteString(fmt.Sprintf("  %-40s %8s %8s %8s %+8.0f %8s %8s %8s %7s  %s\n",
			clip(name, 40), num(p.Rate1s), num(p.Rate10s), num(p.Rate60s), math.Round(p.Net10s)+0,
			num(p.P50), num(p.P99), num(p.Max), tasks, lim))
	}
	w.WriteString(fmt.Sprintf("  %-40s %17s %8s  %s\n", "LIMIT", "USED", "NET/s", "RUNS OUT IN"))
	for _, f := range s.Forecasts {
		left := "-"
		switch {
		case f.HasForecast && f.SecondsLeft > 86400:
			left = "> 1 day"
		case f.HasForecast:
			left = (time.Duration(f.SecondsLeft) * time.Second).String()
		}
		w.WriteString(fmt.Sprintf("  %-40s %17s %+8.1f  %s\n", clip(f.Limit, 40), fmt.Sprintf("%d/%d", f.Current, f.Max), f.Growth, left))
	}
}

// num renders a rate compactly: 0, 12, 1.5k, 23k.
func num(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", math.Round(v))
}

func clip(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// recentLines is how many failure/spike lines the live view keeps below
// the table.
const recentLines = 12

func (t *Text) remember(line string) {
	t.recent = append(t.recent, line)
	if len(t.recent) > recentLines {
		t.recent = t.recent[len(t.recent)-recentLines:]
	}
}

// redraw clears the terminal and draws the live view.
func (t *Text) redraw(s *node.Snapshot) error {
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J") // home, clear
	fmt.Fprintf(&b, "forkwatch  %s  node: %d tasks, pid_max %d, threads-max %d  (Ctrl-C to quit)\n\n",
		s.Time.Format("15:04:05"), s.Node.Tasks, s.Node.PidMax, s.Node.ThreadsMax)
	writeTable(&b, s)
	b.WriteString("\nRECENT FAILURES AND SPIKES\n")
	if len(t.recent) == 0 {
		b.WriteString("  none\n")
	}
	for _, l := range t.recent {
		b.WriteString("  " + l + "\n")
	}
	t.w.WriteString(b.String())
	return t.w.Flush()
}
