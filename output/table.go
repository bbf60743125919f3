package output

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
)

// topLimits is how many limits the text views list, nearest to running
// out first.
const topLimits = 10

// The pod table's layout. Every rate column is 5 wide plus a blank; TASKS
// holds a pid_max's 7 digits. POD and NEAREST LIMIT share what is left:
// POD up to podWide, NEAREST LIMIT the rest; at 80 columns POD gets
// podNarrow and NEAREST LIMIT limitNarrow, which holds
// "pod pids.max (16543 left)" and "threads-max (192000 left)" whole.
const (
	rateWidth   = 6
	tasksWidth  = 8
	podNarrow   = 24
	podWide     = 48
	limitNarrow = 26
	tableIndent = "  "
	limitGap    = "  "
)

// rateColumn is a column of the pod table. The table always shows NOW/s,
// 10s (the rank) and NET/s; the others are shown as the width allows, in
// the order of optional.
type rateColumn struct {
	head string
	cell func(p *node.PodStats) string
}

var (
	colNow = rateColumn{"NOW/s", func(p *node.PodStats) string { return num(p.Rate1s) }}
	col10s = rateColumn{"10s", func(p *node.PodStats) string { return num(p.Rate10s) }}
	col60s = rateColumn{"60s", func(p *node.PodStats) string { return num(p.Rate60s) }}
	colNet = rateColumn{"NET/s", func(p *node.PodStats) string { return signed(p.Net10s) }}
	colP50 = rateColumn{"p50", func(p *node.PodStats) string { return num(p.P50) }}
	colP99 = rateColumn{"p99", func(p *node.PodStats) string { return num(p.P99) }}
	colMax = rateColumn{"max", func(p *node.PodStats) string { return num(p.Max) }}

	// The columns in the order they are printed, and the optional ones in
	// the order the width lets them in.
	allColumns = []*rateColumn{&colNow, &col10s, &col60s, &colNet, &colP50, &colP99, &colMax}
	optional   = []*rateColumn{&col60s, &colP99, &colP50, &colMax}
)

// tableLayout is the pod table at one width.
type tableLayout struct {
	cols       []*rateColumn
	pod, limit int // widths of POD and NEAREST LIMIT
}

func layoutFor(width int) tableLayout {
	fixed := columns(tableIndent) + tasksWidth + columns(limitGap)
	shown := map[*rateColumn]bool{&colNow: true, &col10s: true, &colNet: true}
	n := len(shown)
	for _, c := range optional {
		if fixed+(n+1)*rateWidth+podNarrow+limitNarrow > width {
			break
		}
		shown[c] = true
		n++
	}
	var l tableLayout
	for _, c := range allColumns {
		if shown[c] {
			l.cols = append(l.cols, c)
		}
	}
	rest := width - fixed - n*rateWidth
	// Below 80 columns both give way; every line is clipped to the width
	// in the end.
	l.pod = max(min(podWide, rest-limitNarrow), 10)
	l.limit = rest - l.pod
	return l
}

// podTable renders the ranked pods within width columns: a header, at
// most rows pods and a "… N more" line when some are left out. Under a
// flagged pod's row, its top group of threads (see leakLines).
func podTable(s *node.Snapshot, width, rows int) []string {
	l := layoutFor(width)
	var b strings.Builder
	b.WriteString(tableIndent + padRight("POD", l.pod))
	for _, c := range l.cols {
		b.WriteString(padLeft(c.head, rateWidth))
	}
	b.WriteString(padLeft("TASKS", tasksWidth) + limitGap + "NEAREST LIMIT")
	out := []string{clipEnd(b.String(), width)}
	for i := range s.Pods {
		if i == rows {
			out = append(out, fmt.Sprintf("%s… %d more", tableIndent, len(s.Pods)-rows))
			break
		}
		p := &s.Pods[i]
		flag := ""
		if p.Spiking {
			flag = strings.ToUpper(p.Reason) + " "
		}
		name := flag + fitWho(Who(p.Cgroup, p.Who), l.pod-columns(flag))
		b.Reset()
		b.WriteString(tableIndent + padRight(name, l.pod))
		for _, c := range l.cols {
			b.WriteString(padLeft(c.cell(p), rateWidth))
		}
		tasks := "-"
		if p.Tasks >= 0 {
			tasks = fmt.Sprint(p.Tasks)
		}
		b.WriteString(padLeft(tasks, tasksWidth) + limitGap)
		if p.Limit != nil {
			left := fmt.Sprintf(" (%d left)", p.Limit.Headroom)
			b.WriteString(limitName(p.Limit.Name, p.Cgroup, l.limit-columns(left)) + left)
		}
		out = append(out, clipEnd(strings.TrimRight(b.String(), " "), width))
		if p.Spiking && len(p.Threads) > 0 {
			out = append(out, clipEnd(tableIndent+"    "+groupText(p.Threads[0]), width))
		}
	}
	return out
}

// leakLines is how many lines of threads podTable adds under the first
// rows pods.
func leakLines(s *node.Snapshot, rows int) int {
	n := 0
	for i := range s.Pods[:min(rows, len(s.Pods))] {
		if s.Pods[i].Spiking && len(s.Pods[i].Threads) > 0 {
			n++
		}
	}
	return n
}

// limitName names a pod's nearest limit in at most n columns: its own
// pids.max is "pod pids.max", whatever its path; pid_max and threads_max
// are the kernel's; an ancestor cgroup is named short (/kubepods).
func limitName(limit, podCgroup string, n int) string {
	switch {
	case limit == podCgroup:
		return clipEnd("pod pids.max", n)
	case strings.HasPrefix(limit, "/"):
		return shortCgroup(limit, n)
	}
	return clipEnd(limit, n)
}

// limitTable renders the limits within width columns, those that run out
// soonest first, then the fullest: a header, at most rows limits and a
// "… N more" line when some are left out. A pod's own limit is named by
// the pod.
func limitTable(s *node.Snapshot, width, rows int) []string {
	const used, growth, runsOut = 16, 9, "RUNS OUT IN"
	name := min(60, width-columns(tableIndent)-used-growth-columns(limitGap)-columns(runsOut))
	name = max(name, 10)
	pods := make(map[string]*node.PodStats, len(s.Pods))
	for i := range s.Pods {
		pods[s.Pods[i].Cgroup] = &s.Pods[i]
	}
	out := []string{clipEnd(tableIndent+padRight("LIMIT", name)+padLeft("USED", used)+padLeft("NET/s", growth)+limitGap+runsOut, width)}
	fs := sortedForecasts(s.Forecasts)
	for i, f := range fs {
		if i == rows {
			out = append(out, fmt.Sprintf("%s… %d more", tableIndent, len(fs)-rows))
			break
		}
		left := "-"
		switch {
		case f.HasForecast && f.SecondsLeft > 86400:
			left = "> 1 day"
		case f.HasForecast:
			left = (time.Duration(f.SecondsLeft) * time.Second).String()
		}
		line := tableIndent + padRight(forecastName(f.Limit, pods, name), name) +
			padLeft(fmt.Sprintf("%d/%d", f.Current, f.Max), used) +
			padLeft(fmt.Sprintf("%+.1f", f.Growth), growth) + limitGap + left
		out = append(out, clipEnd(line, width))
	}
	return out
}

// forecastName names a limit in at most n columns: a pod's own pids.max
// by the pod (shop/cart-7d9 pids.max), other cgroups short.
func forecastName(limit string, pods map[string]*node.PodStats, n int) string {
	if !strings.HasPrefix(limit, "/") {
		return clipEnd(limit, n) // pid_max, threads_max
	}
	const suffix = " pids.max"
	if p, ok := pods[limit]; ok && p.Pod != nil {
		return fitWho(Who(p.Cgroup, p.Who), n-columns(suffix)) + suffix
	}
	if info := kube.ParseCgroupPath(limit); info.PodCgroup == limit {
		return shortCgroup(limit, n-columns(suffix)) + suffix
	}
	return shortCgroup(limit, n)
}

// sortedForecasts orders the limits as a person reads them: those that
// run out, soonest first, then the others, fullest first.
func sortedForecasts(in []node.Forecast) []node.Forecast {
	fs := append([]node.Forecast(nil), in...)
	full := func(f node.Forecast) float64 {
		if f.Max <= 0 {
			return 0
		}
		return float64(f.Current) / float64(f.Max)
	}
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.HasForecast != b.HasForecast {
			return a.HasForecast
		}
		if a.HasForecast {
			return a.SecondsLeft < b.SecondsLeft
		}
		return full(a) > full(b)
	})
	return fs
}

// num renders a rate in at most 4 columns: 0, 12, 1.5k, 23k, 1.2M.
func num(v float64) string {
	switch {
	case v >= 9.95e9:
		return fmt.Sprintf("%.0fG", v/1e9)
	case v >= 999.5e6:
		return fmt.Sprintf("%.1fG", v/1e9)
	case v >= 9.95e6:
		return fmt.Sprintf("%.0fM", v/1e6)
	case v >= 999.5e3:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 9950:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 999.5:
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", math.Round(v))
}

// signed renders a growth with its sign in at most 5 columns: +280, -12,
// +1.5k, +0.
func signed(v float64) string {
	s := num(math.Abs(v))
	if v < 0 && s != "0" {
		return "-" + s
	}
	return "+" + s
}
