package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Real programs at real limits, checked against the kernel's own counts:
// stress-ng's clone and pthread stressors in a pod, and kernel.threads-max
// lowered while forkwatch runs.

// stress-ng's clone and pthread stressors in a pod whose pids.max they hit
// tens of thousands of times. Zombies are reaped and threads end all the
// time, so now and then a task of the pod exits between the pids controller's
// refusal and the end of the syscall: the refusal must still be reported
// with the pod's limit, never as unknown. The kernel's refusal counter is
// the ground truth: forkwatch reports exactly that many EAGAIN failures.
// The clone stressor also asks for flag combinations the kernel rejects
// (EINVAL: no limit, not reported) or does not permit (EPERM: reported as
// denied).
func TestStressNgAtPodLimit(t *testing.T) {
	const stressNg = "/usr/bin/stress-ng"
	if os.Getenv("FORKWATCH_VM") == "1" {
		t.Skip("stress-ng is dynamically linked and the VM guest has no libc: this test runs on the host")
	}
	if _, err := os.Stat(stressNg); err != nil {
		if isCI() {
			t.Fatalf("%v: CI=true needs stress-ng (Debian's stress-ng package)", err)
		}
		t.Skipf("%v: install Debian's stress-ng package", err)
	}
	requireRoot(t)
	tr := newTestTree(t)
	p := pod{Namespace: "load", Name: "stress-ng-7f4c9", UID: newPodUID()}
	ctr := randomHex(32)
	podCg := tr.base + "/kubepods/burstable/pod" + p.UID
	ctrCg := podCg + "/" + ctr
	tr.mkdir(ctrCg)
	const podMax = 64
	tr.setMax(podCg, podMax)
	if n := pidsRefusals(t, tr, podCg); n != 0 {
		t.Fatalf("the fresh pod cgroup already counts %d refusals", n)
	}

	fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", podLogsDir(t, p))
	// The shell joins the container's cgroup and becomes stress-ng: every
	// stressor starts inside the pod.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `echo $$ >"$0" && exec "$@"`,
		filepath.Join(tr.root, ctrCg, "cgroup.procs"),
		stressNg, "--clone", "2", "--pthread", "2", "--timeout", "6s", "--temp-path", t.TempDir(), "--metrics-brief")
	cmd.WaitDelay = 10 * time.Second // stressors left behind hold the pipe; the cgroup's removal kills them
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.ProcessState == nil || ctx.Err() != nil {
		t.Fatalf("stress-ng did not run to its end: %v\n%s", err, out.String())
	}
	t.Logf("stress-ng: %v\n%s", cmd.ProcessState, out.String())

	refused := pidsRefusals(t, tr, podCg)
	if refused == 0 {
		t.Fatalf("the kernel refused no fork in the pod: stress-ng did not reach pids.max %d", podMax)
	}
	inPod := func(e event) bool { return e.Cgroup == podCg || strings.HasPrefix(e.Cgroup, podCg+"/") }
	eagain := func(e event) bool { return e.Event == "fork_failed" && e.Errno == "EAGAIN" && inPod(e) }
	waitCount(fw, refused, eagain)
	fw.stop()

	var reported, lost int64
	byErrno, byCause := map[string]int{}, map[string]int{}
	var wrong problems
	for _, e := range fw.events(func(e event) bool { return e.Event == "fork_failed" || e.Event == "events_lost" }) {
		if e.Event == "events_lost" {
			lost += int64(e.Count)
			continue
		}
		what := fmt.Sprintf("%s %s by %s[%d] in %s: cause %q, limit %+v", e.Syscall, e.Errno, e.Comm, e.PID, e.Cgroup, e.Cause, e.Limit)
		switch e.Errno {
		case "EAGAIN", "ENOMEM", "EPERM", "EACCES":
		default:
			// EINVAL (flags the kernel rejects), ENOSYS and the like are
			// no limit: forkwatch does not report them.
			wrong.add("errno "+e.Errno+" reported", what)
			continue
		}
		if !inPod(e) {
			continue
		}
		byErrno[e.Errno]++
		byCause[e.Cause]++
		if e.Cause == "unknown" {
			wrong.add(e.Errno+" with cause unknown", what)
		}
		switch e.Errno {
		case "EPERM", "EACCES":
			if e.Cause != "denied" && e.Cause != "unknown" {
				wrong.add(e.Errno+" not denied", what)
			}
		case "EAGAIN":
			reported++
			if e.Cause != "unknown" && (e.Cause != "pids_cgroup" || e.Limit == nil || e.Limit.Cgroup != podCg || e.Limit.Max != podMax) {
				wrong.add(fmt.Sprintf("EAGAIN not refused by pids_cgroup %s at max %d", podCg, podMax), what)
			}
			if e.Cgroup != ctrCg || e.Pod == nil || *e.Pod != p || e.ContainerID != ctr {
				wrong.add("EAGAIN not named as the pod's container", fmt.Sprintf("%s, pod %+v, container %q", what, e.Pod, e.ContainerID))
			}
		}
	}
	// stress-ng's stressors exit 0 when their time is up, often right after
	// failed clones: a clean exit is no victim.
	for _, x := range exits(fw) {
		if x.ExitCode != nil && *x.ExitCode == 0 {
			wrong.add("clean exit reported as a victim", fmt.Sprintf("%s[%d] in %s after %d failed %s", x.Comm, x.PID, x.Cgroup, x.Failures, x.FailedSyscall))
		}
	}
	t.Logf("pids.max %d: the kernel refused %d forks; forkwatch reported %d EAGAIN from the pod (%d lost); the pod's failures by errno %v, by cause %v",
		podMax, refused, reported, lost, byErrno, byCause)
	wrong.report(t)
	if reported != refused {
		t.Errorf("forkwatch reported %d EAGAIN failures from the pod, the kernel refused %d (%d lost)", reported, refused, lost)
	}
}

// problems counts wrong objects by kind, with the first of each.
type problems struct {
	kinds []string
	count map[string]int
	first map[string]string
}

func (p *problems) add(kind, example string) {
	if p.count == nil {
		p.count, p.first = map[string]int{}, map[string]string{}
	}
	if p.count[kind] == 0 {
		p.kinds = append(p.kinds, kind)
		p.first[kind] = example
	}
	p.count[kind]++
}

func (p *problems) report(t *testing.T) {
	t.Helper()
	for _, k := range p.kinds {
		t.Errorf("%s: %d, e.g. %s", k, p.count[k], p.first[k])
	}
}

// kernel.threads-max lowered while forkwatch runs, a moment before a storm:
// the refusals are classified with the value in force when the kernel
// refused, not the one forkwatch last read — and a second, different value
// is used at once too.
func TestThreadsMaxLoweredAtRunTime(t *testing.T) {
	if os.Getenv("FORKWATCH_VM") != "1" {
		// Not a skip: CI=true fails skipped tests, and this is by design.
		t.Log("runs only in test/vm's throw-away VMs: lowering kernel.threads-max here would starve this machine's other tasks")
		return
	}
	requireRoot(t)
	tr := newTestTree(t)
	cg := tr.base + "/threads-max" // no pids.max: only threads-max can refuse
	tr.mkdir(cg)
	dir := filepath.Join(tr.root, cg)

	old, err := os.ReadFile("/proc/sys/kernel/threads-max")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile("/proc/sys/kernel/threads-max", old, 0); err != nil {
			t.Errorf("restoring kernel.threads-max: %v", err)
		}
	})
	fw := startForkwatch(t, "-o", "json", "--interval", "1s")
	// While threads-max is lowered this process may not get a new OS
	// thread: give its Go runtime idle ones now.
	spareThreads(16)

	type round struct {
		max     int64
		written time.Time
		s       stormSummary
		held    int64
	}
	// lower sets threads-max a little above the node's task count and at
	// once runs a storm that forks until the kernel refuses; the storm
	// holds its children until the test ends.
	lower := func(headroom int64) round {
		t.Helper()
		r := round{max: nodeTasks(t) + headroom} // at least 20, the kernel's minimum
		r.written = time.Now()
		if err := os.WriteFile("/proc/sys/kernel/threads-max", []byte(strconv.FormatInt(r.max, 10)), 0); err != nil {
			t.Fatalf("setting kernel.threads-max to %d: %v", r.max, err)
		}
		r.s = holdFill(t, "--cgroup", dir, "--max", "500", "--attempts", "20")
		r.held = nodeTasks(t)
		// Root, in a cgroup without pids.max, far below pid_max: the only
		// limit that answers EAGAIN here is threads-max.
		if r.s.Failures == 0 || r.s.Errnos["EAGAIN"] != r.s.Failures || r.s.Filled >= 500 {
			t.Fatalf("threads-max %d: storm %+v; want it stopped by EAGAIN", r.max, r.s)
		}
		// And the node is at threads-max (give or take a task that ended
		// since): the kernel's own count says it was that limit.
		if r.held+10 < r.max {
			t.Fatalf("threads-max %d: the storm saw EAGAIN with only %d tasks on the node", r.max, r.held)
		}
		return r
	}

	// forkwatch writes a rates object right after each of its
	// once-a-second readings of the node's limits. nextRates waits for the
	// next one and returns the threads-max read for it: lowering the limit
	// right after that reading leaves the longest time before the next, so
	// a value read only periodically is stale when the storm is refused.
	seen := 0
	nextRates := func() int64 {
		t.Helper()
		var threadsMax int64
		fw.waitFor("the next rates object", func() bool {
			n := 0
			for _, l := range fw.output() {
				var o struct {
					Event string `json:"event"`
					Node  struct {
						ThreadsMax int64 `json:"threads_max"`
					} `json:"node"`
				}
				if json.Unmarshal([]byte(l), &o) == nil && o.Event == "rates" {
					n++
					threadsMax = o.Node.ThreadsMax
				}
			}
			if n > seen {
				seen = n
				return true
			}
			return false
		})
		return threadsMax
	}

	nextRates()
	r1 := lower(40)
	fw.waitFor("the first storm's failures", func() bool { return len(fw.events(ofStorm(r1.s))) >= r1.s.Failures })
	// Once forkwatch has read the first value, a second one, different.
	for try := 0; nextRates() != r1.max; try++ {
		if try == 10 {
			t.Fatalf("forkwatch's rates objects never showed threads_max %d", r1.max)
		}
	}
	r2 := lower(60)
	if r2.max == r1.max {
		t.Fatalf("both rounds set threads-max %d: the second must differ", r1.max)
	}
	if err := os.WriteFile("/proc/sys/kernel/threads-max", old, 0); err != nil {
		t.Fatal(err)
	}
	fw.waitFor("the second storm's failures", func() bool { return len(fw.events(ofStorm(r2.s))) >= r2.s.Failures })
	fw.stop()

	var wrong problems
	for _, e := range fw.events(func(e event) bool { return e.Event == "fork_failed" && e.Cause == "unknown" }) {
		wrong.add("cause unknown", fmt.Sprintf("%s %s by %s[%d] in %s", e.Syscall, e.Errno, e.Comm, e.PID, e.Cgroup))
	}
	wrong.report(t)
	for i, r := range []round{r1, r2} {
		storm := fw.events(func(e event) bool { return e.Event == "fork_failed" && e.PID == r.s.PID })
		if n := len(fw.events(ofStorm(r.s))); n != r.s.Failures {
			t.Errorf("round %d: forkwatch reported %d failures of the storm's forking thread, the storm saw %d", i+1, n, r.s.Failures)
		}
		for _, e := range storm {
			// Nothing on the node exits while the storm holds its children:
			// the task count forkwatch read is still at the limit.
			if e.Errno != "EAGAIN" || e.Cause != "threads_max" || e.Limit == nil || e.Limit.Max != r.max || e.Limit.Current < r.max {
				t.Errorf("round %d, threads-max %d: %s %s, cause %q, limit %+v; want EAGAIN, threads_max at ≥%d/%d",
					i+1, r.max, e.Syscall, e.Errno, e.Cause, e.Limit, r.max, r.max)
				break
			}
		}
		first := "none"
		if len(storm) > 0 {
			first = storm[0].Time.Sub(r.written).Round(time.Millisecond).String()
		}
		t.Logf("round %d: threads-max %d (was %s); storm filled %d, %d failures %v; %d tasks while held; %d reported, the first %s after the write",
			i+1, r.max, strings.TrimSpace(string(old)), r.s.Filled, r.s.Failures, r.s.Errnos, r.held, len(storm), first)
	}
}

// pidsRefusals returns how many forks the pids controller refused for lack
// of room at rel, from the kernel's own counter ("max N" in pids.events),
// for a subtree whose only limit is rel's. cgroup v1, and cgroup v2 before
// pids.events.local existed (or mounted with pids_localevents), count a
// refusal once, in the cgroup of the task that forked: summed over the
// subtree. cgroup v2 with pids.events.local counts it in the cgroup whose
// limit refused and in each ancestor: rel's own count.
func pidsRefusals(t *testing.T, tr *testTree, rel string) int64 {
	t.Helper()
	top := filepath.Join(tr.root, rel)
	if tr.v2 && !pidsLocalEvents(t, tr.root) {
		if _, err := os.Stat(filepath.Join(top, "pids.events.local")); err == nil {
			return pidsEventsMax(t, top)
		}
	}
	var sum int64
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			sum += pidsEventsMax(t, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func pidsEventsMax(t *testing.T, dir string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "pids.events"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "max" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s/pids.events: %q", dir, l)
			}
			return n
		}
	}
	t.Fatalf("%s/pids.events has no max line: %q", dir, b)
	return 0
}

// pidsLocalEvents reports whether the cgroup2 mount at root has the
// pids_localevents option (pids.events then counts like cgroup v1).
func pidsLocalEvents(t *testing.T, root string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == root && f[2] == "cgroup2" {
			return slices.Contains(strings.Split(f[3], ","), "pids_localevents")
		}
	}
	return false
}

// waitCount waits until forkwatch has written want objects that keep
// selects, or gives up after a while without failing: the caller compares
// what it got after stopping forkwatch, whose output may be too large to
// print. Parsing is not cheap at tens of thousands of lines: it polls slowly.
func waitCount(fw *forkwatch, want int64, keep func(event) bool) {
	fw.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for int64(len(fw.events(keep))) < want && time.Now().Before(deadline) {
		select {
		case <-fw.done:
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// exitObject is a task_exited object.
type exitObject struct {
	Event         string `json:"event"`
	PID           int    `json:"pid"`
	Comm          string `json:"comm"`
	Cgroup        string `json:"cgroup"`
	Pod           *pod   `json:"pod"`
	ContainerID   string `json:"container_id"`
	ExitCode      *int   `json:"exit_code"`
	Signal        string `json:"signal"`
	Failures      int    `json:"failures"`
	FailedSyscall string `json:"failed_syscall"`
}

// exits returns the task_exited objects forkwatch wrote.
func exits(fw *forkwatch) []exitObject {
	var out []exitObject
	for _, l := range fw.output() {
		var x exitObject
		if json.Unmarshal([]byte(l), &x) == nil && x.Event == "task_exited" {
			out = append(out, x)
		}
	}
	return out
}

// nodeTasks is the kernel's count of tasks on the node (nr_threads), the
// number kernel.threads-max limits: /proc/loadavg's "running/total".
func nodeTasks(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 4 || !strings.Contains(f[3], "/") {
		t.Fatalf("/proc/loadavg: %q", b)
	}
	n, err := strconv.ParseInt(f[3][strings.Index(f[3], "/")+1:], 10, 64)
	if err != nil {
		t.Fatalf("/proc/loadavg: %q", b)
	}
	return n
}

// spareThreads has the Go runtime start n OS threads and leave them idle,
// for later use at a limit where it could not start one.
func spareThreads(n int) {
	var started, done sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			started.Done()
			<-release
			runtime.UnlockOSThread()
		}()
	}
	started.Wait()
	close(release)
	done.Wait()
}
