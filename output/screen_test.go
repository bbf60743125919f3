package output

import (
	"bytes"
	"fmt"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/output/node/rates"
	"github.com/forkwatch/forkwatch/tracer"
)

const (
	uidLeak = "1c7b6a4e-2f3d-4a5b-8c9d-0123456789ab"
	uidFail = "9f8e7d6c-5b4a-4321-8fed-cba987654321"
	ctrID   = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
)

// crowded is a node during an incident, as the live view gets it: a pod
// leaking threads and one failing at its own pids.max, both under long
// kubelet paths, and 50 quiet pods each with a pids.max of its own.
func crowded() *node.Snapshot {
	podCg := func(qos, uid string) string { return "/kubepods/" + qos + "/pod" + uid }
	leakCg, failCg := podCg("burstable", uidLeak), podCg("burstable", uidFail)
	s := &node.Snapshot{
		Time: t0, Node: limits.Node{PidMax: 4194304, ThreadsMax: 1000000, Tasks: 48210},
		Pods: []node.PodStats{
			{
				Stats: rates.Stats{Key: "pod:" + uidLeak, Rate1s: 2400, Rate10s: 2350, Rate60s: 1200, Net10s: 2300,
					P50: 40, P99: 2500, Max: 2610, Tasks: 31200, Limit: &rates.Limit{Name: leakCg, Headroom: 1568},
					Spiking: true, Reason: "leak", Baseline: 12},
				Who:    node.Who{Pod: &kube.Pod{Namespace: "kube-system", Name: "calico-node-56bgm", UID: uidLeak}},
				Cgroup: leakCg,
			},
			{
				Stats: rates.Stats{Key: "pod:" + uidFail, Rate1s: 60, Rate10s: 58, Rate60s: 57, Net10s: -1,
					P50: 60, P99: 80, Max: 99, Tasks: 20, Limit: &rates.Limit{Name: failCg, Headroom: 0}},
				Who:    node.Who{Pod: &kube.Pod{Namespace: "payments-production", Name: "ledger-reconciliation-worker-6c9f7d8b5-kq2lm", UID: uidFail}},
				Cgroup: failCg,
			},
		},
		Forecasts: []node.Forecast{
			{Limit: "pid_max", Current: 48210, Max: 4194304},
			{Limit: "threads_max", Current: 48210, Max: 1000000},
			{Limit: "/kubepods", Current: 47000, Max: 4194304, Growth: 2300, SecondsLeft: 1803, HasForecast: true},
			{Limit: leakCg, Current: 31200, Max: 32768, Growth: 2300, SecondsLeft: 0.7, HasForecast: true},
			{Limit: failCg, Current: 20, Max: 20},
		},
	}
	for i := 0; i < 50; i++ {
		uid := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		cg := podCg("besteffort", uid)
		s.Pods = append(s.Pods, node.PodStats{
			Stats:  rates.Stats{Key: "pod:" + uid, Tasks: 3, Limit: &rates.Limit{Name: cg, Headroom: 997}},
			Who:    node.Who{Pod: &kube.Pod{Namespace: "default", Name: fmt.Sprintf("idle-%02d", i), UID: uid}},
			Cgroup: cg,
		})
		s.Forecasts = append(s.Forecasts, node.Forecast{Limit: cg, Current: 3, Max: 1000})
	}
	s.Transitions = []node.SpikeTransition{{Start: true, Pod: s.Pods[0]}}
	return s
}

// failingFailure is a fork of the failing pod refused by the pod's own
// pids.max.
func failingFailure(at time.Time) *node.Failure {
	cg := "/kubepods/burstable/pod" + uidFail
	return &node.Failure{
		Failure: tracer.Failure{
			Time: at, Event: "fork_failed", Syscall: "clone", Errno: "EAGAIN", Ret: -11,
			PID: 734120, TID: 734133, Comm: "ledger-worker", Cgroup: cg + "/" + ctrID,
			Cause: tracer.CausePidsCgroup, Limit: &tracer.Limit{Cgroup: cg, Current: 20, Max: 20},
		},
		Who: node.Who{Pod: &kube.Pod{Namespace: "payments-production", Name: "ledger-reconciliation-worker-6c9f7d8b5-kq2lm", UID: uidFail}},
	}
}

// liveAt draws the crowded node's live view on a terminal of cols×rows,
// with a dozen failures and the spike below, and returns its lines.
func liveAt(t *testing.T, cols, rows int) []string {
	t.Helper()
	var out bytes.Buffer
	w := NewText(&out)
	w.Live = true
	w.Size = func() (int, int) { return cols, rows }
	for i := 0; i < 12; i++ {
		w.Failure(failingFailure(t0.Add(time.Duration(i) * time.Second)))
		w.Flush(t0.Add(time.Duration(i)*time.Second + time.Second))
	}
	if err := w.Rates(crowded(), false); err != nil {
		t.Fatal(err)
	}
	frame, ok := strings.CutPrefix(out.String(), "\x1b[H\x1b[2J")
	if !ok {
		t.Fatalf("the view does not start by clearing the screen: %q", out.String())
	}
	return strings.Split(strings.TrimSuffix(frame, "\n"), "\n")
}

var screens = []struct{ cols, rows int }{{80, 24}, {80, 50}, {120, 40}, {200, 50}}

// The live view fits the terminal: no line wider than it (a wider line
// wraps, and the wrapped rows push the title off the screen), no more
// lines than its rows less the cursor's, the title first and a blank line
// above the LIMIT block.
func TestLiveViewFitsTerminal(t *testing.T) {
	for _, sc := range screens {
		lines := liveAt(t, sc.cols, sc.rows)
		t.Logf("%d×%d:\n%s", sc.cols, sc.rows, strings.Join(lines, "\n"))
		for _, l := range lines {
			if columns(l) > sc.cols {
				t.Errorf("%d×%d: line of %d columns: %q", sc.cols, sc.rows, columns(l), l)
			}
		}
		if len(lines) > sc.rows-1 {
			t.Errorf("%d×%d: %d lines", sc.cols, sc.rows, len(lines))
		}
		if !strings.HasPrefix(lines[0], "forkwatch  ") {
			t.Errorf("%d×%d: the title is not first: %q", sc.cols, sc.rows, lines[0])
		}
		text := strings.Join(lines, "\n")
		for _, want := range []string{"\n\n  LIMIT ", "\n  POD ", "\nRECENT FAILURES AND SPIKES\n", "  … "} {
			if !strings.Contains(text, want) {
				t.Errorf("%d×%d: view lacks %q", sc.cols, sc.rows, want)
			}
		}
		// No pod's cgroup path, only its UID's start.
		if strings.Contains(text, "/kubepods/burstable/pod") || strings.Contains(text, uidLeak) {
			t.Errorf("%d×%d: a pod's cgroup path in the view", sc.cols, sc.rows)
		}
		// The failure lines end with the pod's own limit, whole.
		fail := regexp.MustCompile(`(?m)^  14:02:\d\d  EAGAIN  ledger-worker\[734120\]( tid 734133)? \(.+\)  pod pids\.max at 20/20$`)
		if n := len(fail.FindAllString(text, -1)); n < 1 {
			t.Errorf("%d×%d: no whole failure line ending with pod pids.max at 20/20", sc.cols, sc.rows)
		}
	}
}

// The rows of the table at each width: the columns the width allows, every
// row whole, the pod's own limit named as such.
func TestPodTable(t *testing.T) {
	s := crowded()
	for _, tc := range []struct {
		width int
		head  string
	}{
		{80, "  POD                      NOW/s   10s NET/s   TASKS  NEAREST LIMIT"},
		{120, "  POD                                      NOW/s   10s   60s NET/s   p50   p99   max   TASKS  NEAREST LIMIT"},
		{200, "  POD                                              NOW/s   10s   60s NET/s   p50   p99   max   TASKS  NEAREST LIMIT"},
	} {
		lines := podTable(s, tc.width, topPods)
		t.Logf("%d:\n%s", tc.width, strings.Join(lines, "\n"))
		if lines[0] != tc.head {
			t.Errorf("%d: header\n%q, want\n%q", tc.width, lines[0], tc.head)
		}
		if len(lines) != 1+topPods+1 || lines[len(lines)-1] != "  … 42 more" {
			t.Errorf("%d: %d lines, last %q: want %d pods and … 42 more", tc.width, len(lines), lines[len(lines)-1], topPods)
		}
		for _, l := range lines[1 : 1+topPods] {
			if columns(l) > tc.width || !regexp.MustCompile(`^  \S.* \(\d+ left\)$`).MatchString(l) {
				t.Errorf("%d: row of %d columns, or not whole: %q", tc.width, columns(l), l)
			}
		}
		for _, want := range []string{"LEAK ", "calico-node-56bgm", "2.4k", "+2.3k", "31200", "pod pids.max (1568 left)", "pod pids.max (0 left)", "default/idle-00"} {
			if !strings.Contains(strings.Join(lines, "\n"), want) {
				t.Errorf("%d: table lacks %q", tc.width, want)
			}
		}
	}
}

// The limits, soonest to run out first, then the fullest; a pod's own
// pids.max named by the pod.
func TestLimitTable(t *testing.T) {
	for _, width := range []int{80, 120, 200} {
		lines := limitTable(crowded(), width, topLimits)
		t.Logf("%d:\n%s", width, strings.Join(lines, "\n"))
		for _, l := range lines {
			if columns(l) > width {
				t.Errorf("%d: line of %d columns: %q", width, columns(l), l)
			}
		}
		if len(lines) != 1+topLimits+1 || lines[len(lines)-1] != "  … 45 more" {
			t.Errorf("%d: %d lines, last %q", width, len(lines), lines[len(lines)-1])
		}
		for i, want := range []string{"calico-node-56bgm pids.max", "/kubepods", "pids.max"} {
			if !strings.HasPrefix(lines[1+i], "  ") || !strings.Contains(lines[1+i], want) {
				t.Errorf("%d: limit %d is %q, want %s", width, i+1, lines[1+i], want)
			}
		}
		if !strings.Contains(lines[3], "ledger") || !strings.Contains(lines[3], "20/20") {
			t.Errorf("%d: the full pod is not third: %q", width, lines[3])
		}
	}
}

// Piped, the ranked table is laid out for pipedWidth columns, event lines
// whole.
func TestTextPipedTableWidth(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.Failure(failingFailure(t0))
	w.Close()
	w.Rates(crowded(), true)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if !strings.Contains(lines[0], "pids cgroup /kubepods/burstable/pod"+uidFail+" at 20/20") {
		t.Errorf("piped failure line without its full path: %q", lines[0])
	}
	if !strings.Contains(lines[1], "SPIKE  kube-system/calico-node-56bgm  leak:") || !strings.HasSuffix(lines[1], "1568 left under pod pids.max") {
		t.Errorf("spike line %q: want the pod's own limit named pod pids.max", lines[1])
	}
	for _, l := range lines[2:] {
		if columns(l) > pipedWidth {
			t.Errorf("table line of %d columns: %q", columns(l), l)
		}
	}
}

func TestShortCgroup(t *testing.T) {
	for _, tc := range []struct {
		path string
		n    int
		want string
	}{
		{"/", 30, "/"},
		{"/kubepods", 30, "/kubepods"},
		{"/kubepods/burstable", 30, "/kubepods/burstable"},
		{"/kubepods/burstable", 15, "…/burstable"},
		{"/forkwatch-e2e-38830573/kubepods", 26, "…/kubepods"},
		{"/kubepods/burstable/pod" + uidLeak, 60, "…/pod1c7b…"},
		{"/kubepods/burstable/pod" + uidLeak + "/" + ctrID, 60, "…/pod1c7b…/0a1b2c3d4e5f"},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1c7b6a4e_2f3d_4a5b_8c9d_0123456789ab.slice", 60, "…/pod1c7b…"},
		{"/kubepods.slice/kubepods-burstable.slice", 30, "…/kubepods-burstable.slice"},
		{"/system.slice/containerd.service", 12, "…/con…ervice"},
	} {
		if got := shortCgroup(tc.path, tc.n); got != tc.want || columns(got) > tc.n {
			t.Errorf("shortCgroup(%q, %d) = %q, want %q", tc.path, tc.n, got, tc.want)
		}
	}
}

// Rates take at most 4 columns, growths 5, whatever their size.
func TestNumWidth(t *testing.T) {
	for v := 0.0; v < 1e11; v = v*1.01 + 0.37 {
		if s := num(v); columns(s) > 4 {
			t.Fatalf("num(%v) = %q", v, s)
		}
		if s := signed(-v); columns(s) > 5 || (math.Round(v) > 0 && s[0] != '-') {
			t.Fatalf("signed(%v) = %q", -v, s)
		}
	}
	for v, want := range map[float64]string{0: "0", 12: "12", 999: "999", 1500: "1.5k", 23000: "23k", 1.2e6: "1.2M"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
	if signed(-0.2) != "+0" || signed(280) != "+280" || signed(-12) != "-12" {
		t.Errorf("signed: %q %q %q", signed(-0.2), signed(280), signed(-12))
	}
}
