package output

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/threads"
	"github.com/forkwatch/forkwatch/tracer"
)

var leakGroups = []threads.Group{
	{Name: "pool-*-thread-*", Comm: "java", PID: 4121, Count: 1580, Growth: 1200, Span: 10 * time.Second},
	{Name: "GC Thread#*", Comm: "java", PID: 4121, Count: 8, Growth: 0, Span: 10 * time.Second},
}

// snapshotWithThreads is snapshot() with the leaker's groups.
func snapshotWithThreads() *node.Snapshot {
	s := snapshot()
	for i := range s.Pods {
		if s.Pods[i].Spiking {
			s.Pods[i].Threads = leakGroups
		}
	}
	s.Transitions[0].Pod.Threads = leakGroups
	return s
}

func TestJSONSpikeAndRatesThreads(t *testing.T) {
	var out bytes.Buffer
	w := NewJSON(&out)
	w.Rates(snapshotWithThreads(), true)
	w.Flush(t0)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a spike and a rates object:\n%s", out.String())
	}
	want := `,"threads":[{"name":"pool-*-thread-*","comm":"java","pid":4121,"count":1580,"growth_10s":1200},{"name":"GC Thread#*","comm":"java","pid":4121,"count":8,"growth_10s":0}]`
	if !strings.Contains(lines[0], `"state":"start"`) || !strings.HasSuffix(lines[0], want+"}") {
		t.Errorf("spike object %s\nwant it to end with %s}", lines[0], want)
	}
	if !strings.Contains(lines[1], `"spiking":true,"reason":"leak",`) || !strings.Contains(lines[1], want) {
		t.Errorf("rates object %s\nwant the spiking pod with %s", lines[1], want)
	}
	if strings.Count(lines[1], `"threads":`) != 1 {
		t.Errorf("a pod that is not flagged carries threads: %s", lines[1])
	}

	// A flagged pod whose processes all exited: an empty list.
	s := snapshotWithThreads()
	s.Transitions = nil
	for i := range s.Pods {
		if s.Pods[i].Spiking {
			s.Pods[i].Threads = []threads.Group{}
		}
	}
	out.Reset()
	w.Rates(s, true)
	w.Flush(t0)
	if !strings.Contains(out.String(), `"processes_exited":0,"threads":[]}`) {
		t.Errorf("flagged pod with no thread left: %s", out.String())
	}
}

func TestTextThreads(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.Rates(snapshotWithThreads(), true)
	got := out.String()
	spike := "SPIKE  shop/cart-7d9  leak: 300/s created (usual 10/s), net +280/s (usual +0/s), 4120 tasks, 52 left under /kubepods; growing: pool-*-thread-* ×1,580 (+120/s) in java[4121]\n"
	row := "LEAK shop/cart-7d9"
	under := "\n      pool-*-thread-* ×1,580 (+120/s) in java[4121]\n"
	if !strings.Contains(got, spike) || !strings.Contains(got, row) || !strings.Contains(got, under) ||
		strings.Index(got, under) < strings.Index(got, row) {
		t.Fatalf("piped summary:\n%s\nwant the spike line %q and, under the row, %q", got, spike, under)
	}

	// Failure lines name the flagged pod's group: a failure of the pod
	// itself, or one under a limit above it.
	for _, tc := range []struct {
		name   string
		who    node.Who
		cgroup string
		want   string
	}{
		{"in the flagged pod", node.Who{Pod: &kube.Pod{Namespace: "shop", Name: "cart-7d9", UID: "1"}}, "/kubepods/burstable/pod1/c",
			"pids cgroup /kubepods at 49152/49152; growing: pool-*-thread-* ×1,580 (+120/s) in java[4121]\n"},
		{"under /kubepods", node.Who{Pod: &kube.Pod{Namespace: "kube-system", Name: "calico-node-56bgm", UID: "9"}}, "/kubepods/burstable/pod9/c",
			"pids cgroup /kubepods at 49152/49152; growing: pool-*-thread-* ×1,580 (+120/s) in java[4121] (shop/cart-7d9)\n"},
	} {
		out.Reset()
		f := calicoFailure(t0, 4121)
		f.Who, f.Cgroup = tc.who, tc.cgroup
		w.Failure(f)
		w.Close()
		if !strings.HasSuffix(out.String(), tc.want) {
			t.Errorf("%s: %q, want it to end with %q", tc.name, out.String(), tc.want)
		}
	}
	// Refused by a limit the flagged pod is not under: not named.
	out.Reset()
	f := calicoFailure(t0, 4121)
	f.Limit.Cgroup = "/system.slice"
	f.Who, f.Cgroup = node.Who{Owner: "kubelet.service"}, "/system.slice/kubelet.service"
	w.Failure(f)
	w.Close()
	if strings.Contains(out.String(), "growing") {
		t.Errorf("a failure under another limit names the pod's group: %q", out.String())
	}
}

func TestTailThreads(t *testing.T) {
	groups := []threads.Group{leakGroups[0], leakGroups[1], {Name: "java", Comm: "java", PID: 4121, Count: 20}}
	for i := 0; i < 30; i++ {
		groups = append(groups, threads.Group{Name: "x", Comm: "sh", PID: 100 + i, Count: 1})
	}
	s := &node.Snapshot{Time: t0, Tailed: []node.PodThreads{{
		Who: node.Who{Pod: &kube.Pod{Namespace: "shop", Name: "cart-7d9", UID: "1"}}, Cgroup: "/kubepods/pod1",
		Threads: 1638, Processes: 31, Groups: groups,
	}}}
	var out bytes.Buffer
	tw := NewText(&out)
	tw.Threads(s)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := []string{
		"14:02:11  THREADS  shop/cart-7d9: 1,638 threads in 31 processes",
		"  pool-*-thread-* ×1,580 (+120/s) in java[4121]",
		"  GC Thread#* ×8 (+0/s) in java[4121]",
		"  java ×20 in java[4121]",
	}
	if len(lines) != 2+tailGroups || strings.Join(lines[:4], "\n") != strings.Join(want, "\n") || lines[len(lines)-1] != "  … 13 groups more, 13 threads" {
		t.Fatalf("tail summary:\n%s", out.String())
	}

	out.Reset()
	jw := NewJSON(&out)
	jw.Threads(s)
	jw.Flush(t0)
	if !strings.Contains(out.String(), `"event":"threads","pod":{"namespace":"shop","name":"cart-7d9","uid":"1"},"cgroup":"/kubepods/pod1","live_threads":1638,"processes":31,"threads":[{"name":"pool-*-thread-*","comm":"java","pid":4121,"count":1580,"growth_10s":1200},`) ||
		strings.Count(out.String(), `"comm":`) != tailGroups {
		t.Fatalf("tail JSON: %s", out.String())
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1580: "1,580", 1234567: "1,234,567", -1200: "-1,200"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// The live view at every size: the flagged pod's top group on the line
// under its row, every line within the width and the frame within the
// rows; a failure line of the flagged pod names the group where the width
// allows and keeps its limit whole where it does not.
func TestLiveViewThreads(t *testing.T) {
	snap := func() *node.Snapshot {
		s := crowded()
		s.Pods[0].Threads = leakGroups
		s.Transitions[0].Pod.Threads = leakGroups
		return s
	}
	leakFailure := func(at time.Time) *node.Failure {
		f := failingFailure(at)
		cg := "/kubepods/burstable/pod" + uidLeak
		f.Cgroup, f.Comm, f.PID, f.TID = cg+"/"+ctrID, "java", 4121, 4130
		f.Limit = &tracer.Limit{Cgroup: cg, Current: 32768, Max: 32768}
		f.Who = snap().Pods[0].Who
		return f
	}
	for _, sc := range screens {
		var out bytes.Buffer
		w := NewText(&out)
		w.Live = true
		w.Size = func() (int, int) { return sc.cols, sc.rows }
		w.Rates(snap(), false) // the flagged pods, for the failure lines
		w.Failure(leakFailure(t0))
		w.Flush(t0.Add(time.Second))
		out.Reset()
		w.Rates(snap(), false)
		frame := strings.Split(strings.TrimSuffix(strings.TrimPrefix(out.String(), "\x1b[H\x1b[2J"), "\n"), "\n")
		text := strings.Join(frame, "\n")
		t.Logf("%d×%d:\n%s", sc.cols, sc.rows, text)
		if len(frame) > sc.rows-1 {
			t.Errorf("%d×%d: %d lines", sc.cols, sc.rows, len(frame))
		}
		for _, l := range frame {
			if columns(l) > sc.cols {
				t.Errorf("%d×%d: line of %d columns: %q", sc.cols, sc.rows, columns(l), l)
			}
		}
		row := regexp.MustCompile(`(?m)^  LEAK (kube-system/)?calico-node-56bgm.*\n      pool-\*-thread-\* ×1,580 \(\+120/s\) in java\[4121\]$`)
		if !row.MatchString(text) {
			t.Errorf("%d×%d: no group line under the flagged pod's row", sc.cols, sc.rows)
		}
		failure := regexp.MustCompile(`(?m)^  14:02:11  EAGAIN  java\[4121\].*  pod pids\.max at 32768/32768(; growing: pool-\*-thread-\* ×1,580 \(\+120/s\) in java\[4121\])?$`)
		m := failure.FindStringSubmatch(text)
		switch {
		case m == nil:
			t.Errorf("%d×%d: no failure line of the flagged pod ending with its limit or its group", sc.cols, sc.rows)
		case sc.cols >= 200 && m[1] == "":
			t.Errorf("%d×%d: the failure line does not name the group", sc.cols, sc.rows)
		}
	}
}
