package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A pod's container whose *ancestor* (/kubepods, as in the calico-node
// incidents) is at pids.max: every failure is reported, with the ancestor as
// the refusing limit, the pod and container named — and the number forkwatch
// reports is exactly the number the storm saw.
func TestAncestorPidsCgroupLimit(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	p := pod{Namespace: "kube-system", Name: "calico-node-56bgm", UID: newPodUID()}
	ctr := randomHex(32)
	kubepods := tr.base + "/kubepods"
	ctrCgroup := kubepods + "/burstable/pod" + p.UID + "/" + ctr
	tr.mkdir(ctrCgroup)
	tr.setMax(kubepods, 24)

	fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", podLogsDir(t, p))
	s := fill(t, "--cgroup", filepath.Join(tr.root, ctrCgroup), "--attempts", "200")
	for _, e := range fw.allFailures(s, ofStorm(s)) {
		checkFailure(t, e, "pids_cgroup", ctrCgroup, &p, ctr)
		if e.Limit.Cgroup != kubepods || e.Limit.Max != 24 || e.Limit.Current != 24 {
			t.Fatalf("limit = %+v, want cgroup %s at 24/24", *e.Limit, kubepods)
		}
	}
}

// The limit on the pod's own cgroup, with the cgroupfs and the systemd
// cgroup drivers' naming.
func TestPodPidsCgroupLimit(t *testing.T) {
	requireRoot(t)
	for _, driver := range []string{"cgroupfs", "systemd"} {
		t.Run(driver, func(t *testing.T) {
			tr := newTestTree(t)
			p := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
			ctr := randomHex(32)
			var podCgroup, ctrCgroup string
			if driver == "cgroupfs" {
				podCgroup = tr.base + "/kubepods/besteffort/pod" + p.UID
				ctrCgroup = podCgroup + "/" + ctr
			} else {
				u := strings.ReplaceAll(p.UID, "-", "_")
				podCgroup = tr.base + "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice"
				ctrCgroup = podCgroup + "/cri-containerd-" + ctr + ".scope"
			}
			tr.mkdir(ctrCgroup)
			tr.setMax(podCgroup, 16)

			fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", podLogsDir(t, p))
			s := fill(t, "--cgroup", filepath.Join(tr.root, ctrCgroup), "--attempts", "20")
			for _, e := range fw.allFailures(s, ofStorm(s)) {
				checkFailure(t, e, "pids_cgroup", ctrCgroup, &p, ctr)
				if e.Limit.Cgroup != podCgroup || e.Limit.Max != 16 || e.Limit.Current != 16 {
					t.Fatalf("limit = %+v, want cgroup %s at 16/16", *e.Limit, podCgroup)
				}
			}
		})
	}
}

// A PID namespace whose pid_max is used up: cause pid_max, with that
// namespace and its pid_max as the evidence.
func TestPIDNamespacePidMax(t *testing.T) {
	requireRoot(t)
	if !perNamespacePidMax() && os.Getenv("FORKWATCH_VM") != "1" {
		// Before 6.14 the namespace's pid_max is the node's: exhausting it
		// would take this machine down. The VM tests run it on old kernels.
		t.Skip("kernel.pid_max is per PID namespace only since 6.14; run on a newer kernel or in test/vm")
	}
	tr := newTestTree(t)
	cg := tr.base + "/pidns"
	tr.mkdir(cg)

	const pidMax = 400
	perNS := perNamespacePidMax()
	if !perNS {
		// In the VM on an older kernel the storm's write sets the node's
		// pid_max: set it before forkwatch starts, so that forkwatch has
		// read it (it re-reads it every second), and put it back after.
		old, err := os.ReadFile("/proc/sys/kernel/pid_max")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("/proc/sys/kernel/pid_max", []byte(fmt.Sprint(pidMax)), 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.WriteFile("/proc/sys/kernel/pid_max", old, 0) })
	}
	fw := startForkwatch(t, "-o", "json")
	s := fill(t, "--pidns", "--pid-max", fmt.Sprint(pidMax), "--cgroup", filepath.Join(tr.root, cg), "--attempts", "10")
	// The storm forks as PID 1 of its namespace: select by its cgroup.
	got := fw.allFailures(s, func(e event) bool { return e.Cgroup == cg })
	host := hostPIDNamespace(t)
	for _, e := range got {
		checkFailure(t, e, "pid_max", cg, nil, "")
		// With one pid_max for all namespaces, the node's may run out
		// first; with one each, it is the storm's namespace.
		if e.Limit.PIDNamespace == 0 || perNS && e.Limit.PIDNamespace == host {
			t.Fatalf("limit names PID namespace %d, want the storm's own (host is %d)", e.Limit.PIDNamespace, host)
		}
		if e.Limit.Max != pidMax || e.Limit.Current < pidMax-300 || e.Limit.Current > pidMax {
			t.Fatalf("limit = %+v, want a full namespace with pid_max %d", *e.Limit, pidMax)
		}
	}
}

// A user at its `ulimit -u`: cause rlimit_nproc, with the uid and the limit.
func TestRlimitNproc(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	cg := tr.base + "/nproc"
	tr.mkdir(cg)

	fw := startForkwatch(t, "-o", "json")
	const uid, nproc = 65534, 12
	s := fill(t, "--uid", fmt.Sprint(uid), "--nproc", fmt.Sprint(nproc), "--cgroup", filepath.Join(tr.root, cg), "--attempts", "10")
	for _, e := range fw.allFailures(s, ofStorm(s)) {
		checkFailure(t, e, "rlimit_nproc", cg, nil, "")
		if e.Limit.UID == nil || *e.Limit.UID != uid || e.Limit.Max != nproc || e.Limit.Current < nproc {
			t.Fatalf("limit = %+v, want uid %d at ≥%d/%d", *e.Limit, uid, nproc, nproc)
		}
	}
}

// The container's cgroup is removed right after its forks failed (the
// container crashed and the runtime cleaned up), and the pod's log directory
// goes too: the failures still name the pod and container.
func TestDeletedContainerCgroup(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	p := pod{Namespace: "payments", Name: "ledger-0", UID: newPodUID()}
	ctr := randomHex(32)
	podCgroup := tr.base + "/kubepods/pod" + p.UID
	ctrCgroup := podCgroup + "/" + ctr
	tr.mkdir(ctrCgroup)
	tr.setMax(podCgroup, 12)
	logs := podLogsDir(t, p)

	fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", logs)
	s := fill(t, "--cgroup", filepath.Join(tr.root, ctrCgroup), "--attempts", "20", "--rmdir")
	if err := os.RemoveAll(filepath.Join(logs, p.Namespace+"_"+p.Name+"_"+p.UID)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tr.root, ctrCgroup)); !os.IsNotExist(err) {
		t.Fatalf("the container cgroup still exists (%v)", err)
	}
	for _, e := range fw.allFailures(s, ofStorm(s)) {
		checkFailure(t, e, "pids_cgroup", ctrCgroup, &p, ctr)
	}
}

func checkFailure(t *testing.T, e event, cause, cgroup string, p *pod, ctr string) {
	t.Helper()
	if e.Syscall != "clone" || e.Errno != "EAGAIN" || e.Ret != -11 || e.Comm != "storm" || e.TID == 0 || e.Time.IsZero() {
		t.Fatalf("failure %+v: want a clone by storm failing with EAGAIN (-11)", e)
	}
	if e.Cause != cause || e.Limit == nil {
		t.Fatalf("cause = %q, limit = %+v; want %q with its limit", e.Cause, e.Limit, cause)
	}
	if e.Cgroup != cgroup {
		t.Fatalf("cgroup = %q, want %q", e.Cgroup, cgroup)
	}
	switch {
	case p == nil && e.Pod != nil:
		t.Fatalf("pod = %+v, want none", *e.Pod)
	case p != nil && (e.Pod == nil || *e.Pod != *p):
		t.Fatalf("pod = %+v, want %+v", e.Pod, *p)
	}
	if e.ContainerID != ctr {
		t.Fatalf("container_id = %q, want %q", e.ContainerID, ctr)
	}
}

// A container runtime starting a process with clone3(CLONE_INTO_CGROUP) in a
// pod whose pids cgroup is full: the caller's own cgroups have room. fentry
// mode sees the refusal in pids_can_fork() and names the pod the child was
// to join and its limit; the other modes see a failure whose limit is not the
// caller's, and say unknown rather than guess.
func TestCloneIntoFullCgroup(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	if !tr.v2 {
		t.Skip("CLONE_INTO_CGROUP needs the pids controller on cgroup v2; test/vm runs it on its v2 kernels")
	}
	p := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	ctr := randomHex(32)
	podCgroup := tr.base + "/kubepods/pod" + p.UID
	ctrCgroup := podCgroup + "/" + ctr
	runtimeCgroup := tr.base + "/containerd.service"
	tr.mkdir(ctrCgroup)
	tr.mkdir(runtimeCgroup)
	tr.setMax(podCgroup, 5)

	fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", podLogsDir(t, p))
	exact := false
	for _, e := range fw.events(func(e event) bool { return e.Event == "attached" }) {
		for _, prog := range e.Programs {
			exact = exact || prog.Hook == "fexit/pids_can_fork"
		}
	}
	s := fill(t, "--cgroup", filepath.Join(tr.root, runtimeCgroup), "--into", filepath.Join(tr.root, ctrCgroup), "--attempts", "10")
	if s.Filled != 5 {
		t.Fatalf("storm placed %d children in the pod, want 5 (its pids.max)", s.Filled)
	}
	for _, e := range fw.allFailures(s, ofStorm(s)) {
		if e.Syscall != "clone3" || e.Errno != "EAGAIN" {
			t.Fatalf("failure %+v: want clone3 failing with EAGAIN", e)
		}
		if !exact {
			if e.Cause != "unknown" || e.Cgroup != runtimeCgroup || e.IntoCgroup {
				t.Fatalf("without fexit/pids_can_fork: cause %q, cgroup %q, into_cgroup %v; want unknown in the caller's %s", e.Cause, e.Cgroup, e.IntoCgroup, runtimeCgroup)
			}
			continue
		}
		if !e.IntoCgroup {
			t.Fatalf("failure %+v: into_cgroup not set", e)
		}
		e.Syscall = "clone" // checkFailure's storm forks with clone
		checkFailure(t, e, "pids_cgroup", ctrCgroup, &p, ctr)
		if e.Limit.Cgroup != podCgroup || e.Limit.Max != 5 || e.Limit.Current != 5 {
			t.Fatalf("limit = %+v, want cgroup %s at 5/5", *e.Limit, podCgroup)
		}
	}
	t.Logf("%d failures, refusing cgroup found in the kernel: %v", s.Failures, exact)
}

func hostPIDNamespace(t *testing.T) uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// perNamespacePidMax reports whether the kernel keeps pid_max per PID
// namespace (6.14+).
func perNamespacePidMax() bool {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return false
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	var major, minor int
	fmt.Sscanf(b.String(), "%d.%d", &major, &minor)
	return major > 6 || (major == 6 && minor >= 14)
}
