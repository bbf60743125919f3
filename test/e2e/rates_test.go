package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// startStorm starts a storm command in the background and returns it with
// its stdout lines; the test's cleanup kills it.
func startStorm(t *testing.T, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(stormBin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe() // closed by the cleanup: storm releases and exits
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, lines
}

type spike struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	State  string    `json:"state"`
	Pod    *pod      `json:"pod"`
	Reason string    `json:"reason"`
}

// Two pods: a worker pool creating and reaping threads as fast as a core
// allows, and a service that starts leaking threads mid-run, as a leaking
// service once filled a node's pid_max. The leaker is flagged within 5 s of
// the start of its leak, the pool never.
func TestLeakerFlaggedWorkerPoolNot(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	pool := pod{Namespace: "batch", Name: "workers-0", UID: newPodUID()}
	leaker := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	poolCg := tr.base + "/kubepods/burstable/pod" + pool.UID + "/" + randomHex(32)
	leakCg := tr.base + "/kubepods/burstable/pod" + leaker.UID + "/" + randomHex(32)
	tr.mkdir(poolCg)
	tr.mkdir(leakCg)

	fw := startForkwatch(t, "-o", "json", "--interval", "1s", "--pod-logs-dir", podLogsDir(t, pool, leaker))
	startStorm(t, "churn", "--kind", "thread", "--duration", "40s", "--cgroup", filepath.Join(tr.root, poolCg))
	_, leakOut := startStorm(t, "leak", "--after", "15s", "--rate", "200", "--duration", "30s", "--cgroup", filepath.Join(tr.root, leakCg))

	var started struct {
		LeakStart time.Time `json:"leak_start"`
	}
	select {
	case l := <-leakOut:
		if err := json.Unmarshal([]byte(l), &started); err != nil {
			t.Fatalf("storm leak printed %q: %v", l, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the leak never started")
	}
	spikes := func(p pod) []spike {
		var out []spike
		for _, l := range fw.output() {
			var s spike
			if json.Unmarshal([]byte(l), &s) == nil && s.Event == "spike" && s.State == "start" && s.Pod != nil && s.Pod.UID == p.UID {
				out = append(out, s)
			}
		}
		return out
	}
	fw.waitFor("the leaker's spike", func() bool { return len(spikes(leaker)) > 0 })
	// Let the leak and the pool run on a while: neither a second spike
	// start for the leaker (it stays flagged) nor any for the pool.
	time.Sleep(8 * time.Second)
	fw.stop()

	first := spikes(leaker)[0]
	d := first.Time.Sub(started.LeakStart)
	if d < 0 || d > 5*time.Second {
		t.Fatalf("leaker flagged %v after its leak began, want within 5 s", d)
	}
	t.Logf("leaker flagged %v after its leak began", d)
	if first.Reason != "leak" {
		t.Errorf("leaker flagged for %q, want leak", first.Reason)
	}
	if s := spikes(pool); len(s) > 0 {
		t.Fatalf("the steady worker pool was flagged: %+v", s)
	}
	// The periodic rates object ranks both pods with their rates.
	var sawPool bool
	for _, l := range fw.output() {
		var r struct {
			Event string `json:"event"`
			Pods  []struct {
				Pod     *pod    `json:"pod"`
				Rate10s float64 `json:"rate_10s"`
				Net10s  float64 `json:"net_10s"`
			} `json:"pods"`
		}
		if json.Unmarshal([]byte(l), &r) != nil || r.Event != "rates" {
			continue
		}
		for _, p := range r.Pods {
			if p.Pod != nil && p.Pod.UID == pool.UID && p.Rate10s > 1000 && p.Net10s < 50 && p.Net10s > -50 {
				sawPool = true
			}
		}
	}
	if !sawPool {
		t.Fatal("no rates object showed the worker pool creating >1000 threads/s with no net growth")
	}
}

// --pod tails one pod: its creations and exits, and none of another pod's.
// The pod does not exist yet when forkwatch starts (--wait), and its
// container's cgroup appears later still: both are picked up.
func TestPodTail(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	mine := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	other := pod{Namespace: "batch", Name: "workers-0", UID: newPodUID()}
	myPodCg := tr.base + "/kubepods/pod" + mine.UID
	myCg := myPodCg + "/" + randomHex(32)
	otherCg := tr.base + "/kubepods/pod" + other.UID + "/" + randomHex(32)
	tr.mkdir(otherCg)
	logs := podLogsDir(t, other)

	fw := startForkwatch(t, "-o", "json", "--pod", mine.Name, "-n", mine.Namespace, "--wait", "--pod-logs-dir", logs)
	if !strings.Contains(fw.stderr.String(), "does not exist yet, waiting") {
		t.Fatalf("forkwatch did not say it waits for the pod: %q", fw.stderr.String())
	}
	// kubelet creates the pod's log directory and cgroup, then the runtime
	// the container's cgroup.
	if err := os.MkdirAll(filepath.Join(logs, mine.Namespace+"_"+mine.Name+"_"+mine.UID), 0o755); err != nil {
		t.Fatal(err)
	}
	tr.mkdir(myPodCg)
	tr.mkdir(myCg)
	_, otherOut := startStorm(t, "churn", "--kind", "thread", "--duration", "4s", "--cgroup", filepath.Join(tr.root, otherCg))
	_, myOut := startStorm(t, "churn", "--kind", "process", "--duration", "4s", "--cgroup", filepath.Join(tr.root, myCg))
	for range myOut {
	}
	for range otherOut {
	}
	type taskEvent struct {
		Event  string `json:"event"`
		Kind   string `json:"kind"`
		Pod    *pod   `json:"pod"`
		Cgroup string `json:"cgroup"`
	}
	var created, exited int
	fw.waitFor("the pod's creations and exits", func() bool {
		created, exited = 0, 0
		for _, l := range fw.output() {
			var e taskEvent
			if json.Unmarshal([]byte(l), &e) != nil {
				continue
			}
			if e.Event == "task_created" && e.Kind == "process" {
				created++
			}
			if e.Event == "task_exited" && e.Kind == "process" {
				exited++
			}
		}
		return created > 10 && exited > 10
	})
	fw.stop()
	for _, l := range fw.output() {
		var e taskEvent
		if json.Unmarshal([]byte(l), &e) != nil || !strings.HasPrefix(e.Event, "task_") {
			continue
		}
		if e.Pod == nil || *e.Pod != mine || e.Cgroup != myCg {
			t.Fatalf("tail of %s/%s showed %+v", mine.Namespace, mine.Name, e)
		}
	}
}

// A pod that does not exist: exit 2 with a clear line, unless --wait.
func TestPodTailMissingPod(t *testing.T) {
	requireRoot(t)
	checkUsageError(t, exec.Command(forkwatchBin, "--pod", "nope", "--pod-logs-dir", podLogsDir(t)), "pod nope not found")
}

// A Go service whose thread creation fails dies with "failed to create new
// OS thread", exit code 2, like calico-node: forkwatch reports each clone
// the kernel refused (its own count, pids.events) and, once, the exit with
// the failures that preceded it.
func TestVictimReported(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	p := pod{Namespace: "kube-system", Name: "calico-node-56bgm", UID: newPodUID()}
	podCg := tr.base + "/kubepods/burstable/pod" + p.UID
	ctrCg := podCg + "/" + randomHex(32)
	tr.mkdir(ctrCg)
	tr.setMax(podCg, 30)

	fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", podLogsDir(t, p))
	cmd := exec.Command(stormBin, "threads", "--count", "100", "--cgroup", filepath.Join(tr.root, ctrCg))
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "failed to create new OS thread") {
		t.Fatalf("the Go runtime did not die for lack of threads: %v\n%s", err, out)
	}
	pid := cmd.ProcessState.Pid()
	refused := pidsRefusals(t, tr, podCg)
	isVictim := func(x exitObject) bool { return x.PID == pid }
	fw.waitFor("the victim's exit", func() bool { return slices.ContainsFunc(exits(fw), isVictim) })
	fw.stop()

	// Every clone the pids controller refused (the runtime retries each
	// thread creation on EAGAIN before it gives up) is reported, as the
	// pod's limit, and the victim's count is the number reported.
	failed := fw.events(func(e event) bool { return e.Event == "fork_failed" && e.Cgroup == ctrCg })
	if refused == 0 || int64(len(failed)) != refused {
		t.Fatalf("forkwatch reported %d failed clones in the container, the kernel refused %d", len(failed), refused)
	}
	for _, e := range failed {
		if e.PID != pid || e.Syscall != "clone" || e.Errno != "EAGAIN" || e.Cause != "pids_cgroup" || e.Limit == nil || e.Limit.Cgroup != podCg || e.Limit.Max != 30 {
			t.Fatalf("failure %+v, limit %+v: want the victim's clone refused with EAGAIN by pids_cgroup %s at max 30", e, e.Limit, podCg)
		}
	}
	victims := slices.DeleteFunc(exits(fw), func(x exitObject) bool { return !isVictim(x) })
	if len(victims) != 1 {
		t.Fatalf("%d task_exited objects for PID %d, want one: %+v", len(victims), pid, victims)
	}
	got := victims[0]
	if got.ExitCode == nil || *got.ExitCode != 2 || got.Failures != len(failed) || got.FailedSyscall != "clone" || got.Pod == nil || *got.Pod != p {
		t.Fatalf("victim %+v (exit code %v); want exit code 2 after the %d failed clones reported", got, got.ExitCode, len(failed))
	}
	t.Logf("the kernel refused %d clones, forkwatch reported %d; victim exited %d after %d failures", refused, len(failed), *got.ExitCode, got.Failures)
}
