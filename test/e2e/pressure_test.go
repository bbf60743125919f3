package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An always-on forkwatch in tracepoint mode keeps the failure hooks (the
// syscall-exit tracepoints, a tax on every syscall of the node) detached
// while no limit is within reach:
//   - a pod whose tasks grow within reach of its pids.max (a shell starting
//     sleeps, as a leaking service starts threads) arms them, without a
//     refusal; when it grows on to the limit every refusal pids.events
//     counts is reported as a failed fork. (How long the attach takes, and
//     so how fast a leak can outrun it, is measured by make bench.)
//   - once the pod is gone and nothing is near a limit, they are detached
//     after the calm period;
//   - a fork refused with no warning (pids.max lowered under a cgroup's
//     tasks, then a fork) is counted from pids.events and reported with its
//     cgroup: never silent.
func TestFailureHooksArmedByPressure(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	p := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	ctr := randomHex(32)
	podCg := tr.base + "/kubepods/burstable/pod" + p.UID
	ctrCg := podCg + "/" + ctr
	ctrDir := tr.mkdir(ctrCg)
	fw := startForkwatch(t, "-o", "json", "--failure-hooks", "pressure", "--failure-hooks-calm", "2s", "--pod-logs-dir", podLogsDir(t, p))

	armed, policy := fw.hooksArmed()
	if policy != "pressure" {
		// fentry and kprobe modes hook the fork path only: nothing to arm.
		if !armed {
			t.Fatalf("policy %s, failure hooks not armed", policy)
		}
		t.Logf("%s mode: the failure hooks are attached throughout (policy %s)", fw.events(func(e event) bool { return e.Event == "attached" })[0].Mode, policy)
		return
	}
	if armed {
		t.Fatal("the failure hooks are armed at start, with no limit within reach")
	}

	// Growth: a shell starts sleeps in the pod, 45 (within reach of its
	// pids.max of 100: headroom below 64), waits, then more until the limit
	// refuses.
	tr.setMax(podCg, 100)
	grow := fmt.Sprintf("%s/grow", t.TempDir())
	sh := exec.Command("sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs; for i in $(seq 45); do sleep 60 >/dev/null 2>&1 & done; echo 45; read go < %s; for i in $(seq 150); do sleep 60 >/dev/null 2>&1 & done; wait", ctrDir, grow))
	if err := syscall.Mkfifo(grow, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	sh.Stderr = &stderr
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer sh.Process.Kill()
	defer killCgroup(t, ctrDir)
	if _, err := fmt.Fscanln(stdout, new(int)); err != nil {
		t.Fatalf("the shell did not start its first 45 sleeps: %v; %s", err, stderr.String())
	}
	if n := pidsRefusals(t, tr, podCg); n != 0 {
		t.Fatalf("pids.events counts %d refusals at 46 of 100 tasks", n)
	}
	armedNow := func() bool { a, _ := fw.hooksArmed(); return a }
	fw.waitFor("the failure hooks armed by the pod's growth", armedNow)
	if err := os.WriteFile(grow, []byte("go\n"), 0); err != nil {
		t.Fatal(err)
	}
	sh.Wait() // dash gives up at the first refusal
	out := stderr.String()
	refused := pidsRefusals(t, tr, podCg)
	if refused == 0 {
		t.Fatalf("pids.events counts no refusal in %s; the shell said %q", podCg, out)
	}
	inPod := func(e event) bool { return e.Event == "fork_failed" && strings.HasPrefix(e.Cgroup, podCg) }
	fw.waitFor(fmt.Sprintf("%d failures", refused), func() bool { return int64(len(fw.events(inPod))) >= refused })
	var armedAt, withinReach, firstFailure time.Time
	for _, e := range fw.events(func(e event) bool { return e.Event == "failure_hooks" || inPod(e) }) {
		switch {
		case e.Event == "failure_hooks" && e.Armed && armedAt.IsZero():
			armedAt, withinReach = e.Time, e.WithinReach
			if !strings.Contains(e.Reason, podCg) {
				t.Errorf("armed for %q, want the pod's cgroup %s", e.Reason, podCg)
			}
			if withinReach.IsZero() || withinReach.After(armedAt) {
				t.Errorf("armed at %v for a limit within reach at %v", armedAt, withinReach)
			}
		case inPod(e) && firstFailure.IsZero():
			firstFailure = e.Time
		}
	}
	if armedAt.IsZero() || !armedAt.Before(firstFailure) {
		t.Fatalf("failure hooks armed at %v, first failure at %v: not armed before the first refusal", armedAt, firstFailure)
	}
	if got := int64(len(fw.events(inPod))); got != refused {
		t.Fatalf("forkwatch reported %d failures in the pod, its pids.events counts %d", got, refused)
	}

	// Calm: the pod's tasks gone, the hooks are detached.
	killCgroup(t, ctrDir)
	disarmed := func() bool { a, _ := fw.hooksArmed(); return !a }
	fw.waitFor("the failure hooks detached after the calm period", disarmed)

	// No warning: a shell moved into a cgroup without a limit, which then
	// gets one at its tasks, and forks (a background job: every shell
	// forks for it, where busybox runs some commands in-process).
	other := tr.base + "/system.slice/batch.service"
	otherDir := tr.mkdir(other)
	before := pidsRefusals(t, tr, other)
	exec.Command("sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs; echo 1 > %s/pids.max; sleep 0 & wait", otherDir, otherDir)).Run()
	sudden := pidsRefusals(t, tr, other) - before
	if sudden == 0 {
		t.Fatalf("pids.events of %s counts no refusal", other)
	}
	unseen := func(e event) bool { return e.Event == "refusals_unseen" && e.Cgroup == other }
	fw.waitFor("the refusals reported from pids.events", func() bool { return len(fw.events(unseen)) > 0 })
	var counted uint64
	for _, e := range fw.events(unseen) {
		counted += e.Count
	}
	seen := len(fw.events(func(e event) bool { return e.Event == "fork_failed" && e.Cgroup == other }))
	if counted+uint64(seen) != uint64(sudden) {
		t.Fatalf("%d refusals reported from pids.events and %d seen, pids.events counts %d", counted, seen, sudden)
	}
	for _, e := range fw.events(func(e event) bool { return e.Event == "failure_hooks" || e.Event == "refusals_unseen" }) {
		t.Logf("%s %s armed=%v %s", e.Time.Format("15:04:05.000"), e.Event, e.Armed, e.Reason)
	}
	t.Logf("armed %v after the limit came within reach, before the first of %d refusals, all reported; %d refused with no warning, %d counted from pids.events",
		armedAt.Sub(withinReach), refused, sudden, counted)
}

// killCgroup kills the processes in the cgroup directory dir and waits
// until it is empty.
func killCgroup(t *testing.T, dir string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %v", dir, pids)
		}
		for _, pid := range pids {
			if n, err := strconv.Atoi(pid); err == nil {
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
	}
}
