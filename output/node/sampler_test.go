package node

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/output/node/rates"
	"github.com/forkwatch/forkwatch/tracer"
)

// fakeKernel hands the sampler per-cgroup counts set by the test.
type fakeKernel struct{ counts map[uint64]tracer.TaskCounts }

func (k *fakeKernel) TaskCounts() (map[uint64]tracer.TaskCounts, error) { return k.counts, nil }
func (k *fakeKernel) EventsLost() (uint64, error)                       { return 0, nil }
func (k *fakeKernel) MissedRuns() map[string]uint64                     { return nil }
func (k *fakeKernel) SetNodeLimits(int64, int64) error                  { return nil }

// fakeNode is a proc filesystem and a pids cgroup tree in a directory.
type fakeNode struct {
	t                *testing.T
	proc, cgroupRoot string
}

func newFakeNode(t *testing.T) *fakeNode {
	dir := t.TempDir()
	n := &fakeNode{t: t, proc: filepath.Join(dir, "proc"), cgroupRoot: filepath.Join(dir, "cgroup")}
	n.write(filepath.Join(n.proc, "sys/kernel/pid_max"), "4194304\n")
	n.write(filepath.Join(n.proc, "sys/kernel/threads-max"), "1000000\n")
	n.write(filepath.Join(n.proc, "loadavg"), "0.1 0.1 0.1 1/900 100\n")
	n.write(filepath.Join(n.cgroupRoot, "cgroup.procs"), "")
	return n
}

func (n *fakeNode) write(path, content string) {
	n.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// container makes a pod's container cgroup holding the processes pids and
// returns its id (its inode, as the kernel's cgroup ids are).
func (n *fakeNode) container(rel string, tasks int, pids ...int) uint64 {
	dir := filepath.Join(n.cgroupRoot, rel)
	procs := ""
	for _, p := range pids {
		procs += fmt.Sprintln(p)
	}
	n.write(filepath.Join(dir, "cgroup.procs"), procs)
	n.write(filepath.Join(filepath.Dir(dir), "pids.current"), fmt.Sprintln(tasks))
	n.write(filepath.Join(filepath.Dir(dir), "pids.max"), "max\n")
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		n.t.Fatal(err)
	}
	return st.Ino
}

// threads gives process pid (named comm) these thread names, TIDs from
// pid; names already given stay (threads only start).
func (n *fakeNode) threads(pid int, comm string, names []string) {
	dir := filepath.Join(n.proc, fmt.Sprint(pid))
	n.write(filepath.Join(dir, "comm"), comm+"\n")
	for i, name := range names {
		f := filepath.Join(dir, "task", fmt.Sprint(pid+i), "comm")
		if _, err := os.Stat(f); err != nil {
			n.write(f, name+"\n")
		}
	}
}

// A leaking pod is read from its first hot second: when it is flagged its
// spike and its row carry its groups, the leaking one first, with its
// growth; a steady worker pool's pod is never read. Its process exiting
// leaves the still-flagged pod with no group, and no error.
func TestSamplerThreadsOfFlaggedPod(t *testing.T) {
	n := newFakeNode(t)
	leakUID, poolUID := "11111111-2222-3333-4444-555555555555", "66666666-2222-3333-4444-555555555555"
	leakID := n.container("/kubepods/burstable/pod"+leakUID+"/c1", 0, 4121)
	poolID := n.container("/kubepods/besteffort/pod"+poolUID+"/c2", 0, 5000)
	k := &fakeKernel{counts: map[uint64]tracer.TaskCounts{}}
	root := CgroupRoot{Path: n.cgroupRoot}
	s := NewSampler(k, root, NewCgroupPaths(root.Path), &Attributor{}, rates.DefaultConfig)
	s.procfs = n.proc
	s.threadsBudget = 1e9 // read every second, however long a reading takes here

	names := func(leaked int) []string {
		out := []string{"java", "java", "GC Thread#0", "GC Thread#1", "C2 CompilerThre"}
		for i := 0; i < leaked; i++ {
			name := fmt.Sprintf("pool-3-thread-%d", i+1)
			out = append(out, name[:min(15, len(name))]) // as the kernel keeps it
		}
		return out
	}
	n.threads(5000, "worker", []string{"worker", "worker-1", "worker-2"})
	t0 := time.Unix(1_700_000_000, 0)
	var snap *Snapshot
	var started *SpikeTransition
	leaked := 0
	for sec := 0; sec < 20 && started == nil; sec++ {
		if sec >= 5 {
			leaked += 25 // 25 threads a second from the 5th second
		}
		n.threads(4121, "java", names(leaked))
		k.counts[leakID] = tracer.TaskCounts{ThreadsCreated: uint64(5 + leaked)}
		k.counts[poolID] = tracer.TaskCounts{ThreadsCreated: uint64(3 + 1000*sec), ThreadsExited: uint64(1000 * sec)}
		snap = s.Sample(t0.Add(time.Duration(sec) * time.Second))
		if snap.Err != nil {
			t.Fatal(snap.Err)
		}
		for i, tr := range snap.Transitions {
			if tr.Start && tr.Pod.Pod.UID == leakUID {
				started = &snap.Transitions[i]
			}
		}
		for _, p := range snap.Pods {
			if p.Pod.UID == poolUID && (p.Threads != nil || p.Hot > 0) {
				t.Fatalf("second %d: the worker pool is hot or read: %+v", sec, p)
			}
		}
	}
	if started == nil {
		t.Fatal("the leaking pod was never flagged")
	}
	g := started.Pod.Threads
	if len(g) != 4 || g[0].Name != "pool-*-thread-*" || g[0].Comm != "java" || g[0].PID != 4121 || g[0].Count != leaked ||
		g[0].Growth != 50 || g[0].Span != 2*time.Second {
		t.Fatalf("spike start carries %+v: want pool-*-thread-* of java[4121] first, %d threads, +50 over the 2 s it was read", g, leaked)
	}
	for _, p := range snap.Pods {
		if p.Pod.UID == leakUID && (len(p.Threads) == 0 || p.Threads[0] != g[0]) {
			t.Fatalf("the flagged pod's row carries %+v, its spike %+v", p.Threads, g)
		}
	}
	// Ten seconds on, the growth is over 10 s.
	for sec := 0; sec < 10; sec++ {
		leaked += 25
		n.threads(4121, "java", names(leaked))
		k.counts[leakID] = tracer.TaskCounts{ThreadsCreated: uint64(5 + leaked)}
		snap = s.Sample(started.Pod.SpikingSince.Add(time.Duration(sec+1) * time.Second))
	}
	for _, p := range snap.Pods {
		if p.Pod.UID == leakUID && (!p.Spiking || p.Threads[0].Growth != 250 || p.Threads[0].Span != 10*time.Second) {
			t.Fatalf("after 10 s more: %+v", p)
		}
	}
	// A pod whose reading takes more than its budget is read less often:
	// its last groups stand meanwhile.
	s.threadsBudget = 1e-9
	last := snap.Time
	for sec := 1; sec <= 2; sec++ {
		leaked += 25
		n.threads(4121, "java", names(leaked))
		k.counts[leakID] = tracer.TaskCounts{ThreadsCreated: uint64(5 + leaked)}
		snap = s.Sample(last.Add(time.Duration(sec) * time.Second))
		for _, p := range snap.Pods {
			if p.Pod.UID == leakUID && (sec == 1) != (p.Threads[0].Count == leaked) {
				t.Fatalf("second %d past its budget: %+v with %d threads", sec, p.Threads[0], leaked)
			}
		}
	}
	s.threadsBudget = 1e9
	for _, r := range s.threadsRead {
		r.next = time.Time{} // due now
	}

	// The process exits: its cgroup lists nobody, /proc has it no more.
	n.container("/kubepods/burstable/pod"+leakUID+"/c1", 0)
	os.RemoveAll(filepath.Join(n.proc, "4121"))
	snap = s.Sample(snap.Time.Add(time.Second))
	for _, p := range snap.Pods {
		if p.Pod.UID == leakUID && (!p.Spiking || p.Threads == nil || len(p.Threads) != 0) {
			t.Fatalf("the flagged pod whose process exited: spiking %v, threads %+v; want flagged with no group", p.Spiking, p.Threads)
		}
	}
	if snap.Errors != 0 {
		t.Fatalf("errors: %v", snap.Err)
	}

	// Tailed, the pool's pod is read though it is not flagged.
	s.Tail([]string{poolUID})
	snap = s.Sample(snap.Time.Add(time.Second))
	if len(snap.Tailed) != 1 || snap.Tailed[0].Threads != 3 || snap.Tailed[0].Processes != 1 || len(snap.Tailed[0].Groups) != 2 ||
		snap.Tailed[0].Groups[0].Name != "worker-*" || snap.Tailed[0].Groups[1].Name != "worker" {
		t.Fatalf("tailed: %+v", snap.Tailed)
	}
}
