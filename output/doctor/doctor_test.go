package doctor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// node is a crafted node: /proc, a pids hierarchy, pod logs, systemd unit
// directories and limits.conf, all in a temp dir.
type fakeNode struct {
	t   *testing.T
	dir string
	cfg Config
}

func newNode(t *testing.T, pidMax, threadsMax, tasks int64) *fakeNode {
	t.Helper()
	dir := t.TempDir()
	n := &fakeNode{t: t, dir: dir, cfg: Config{
		ProcRoot:    filepath.Join(dir, "proc"),
		CgroupRoot:  filepath.Join(dir, "cgroup"),
		PodLogsDir:  filepath.Join(dir, "pods"),
		SystemdDirs: []string{filepath.Join(dir, "etc/systemd/system"), filepath.Join(dir, "run/systemd/system"), filepath.Join(dir, "lib/systemd/system")},
		LimitsConf:  filepath.Join(dir, "etc/security/limits.conf"),
		LimitsDir:   filepath.Join(dir, "etc/security/limits.d"),
	}}
	n.file("proc/sys/kernel/pid_max", fmt.Sprintln(pidMax))
	n.file("proc/sys/kernel/threads-max", fmt.Sprintln(threadsMax))
	n.file("proc/loadavg", fmt.Sprintf("0.10 0.20 0.30 2/%d 4242\n", tasks))
	n.file("cgroup/cgroup.procs", "1\n") // v1 root: no pids files
	return n
}

func (n *fakeNode) file(rel, content string) {
	n.t.Helper()
	p := filepath.Join(n.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// cgroup creates a pids cgroup at rel (below the hierarchy root).
func (n *fakeNode) cgroup(rel string, current int64, max string) {
	n.t.Helper()
	n.file(filepath.Join("cgroup", rel, "pids.current"), fmt.Sprintln(current))
	n.file(filepath.Join("cgroup", rel, "pids.max"), max+"\n")
}

func (n *fakeNode) podLog(ns, name, uid string) {
	n.t.Helper()
	if err := os.MkdirAll(filepath.Join(n.cfg.PodLogsDir, ns+"_"+name+"_"+uid, "app"), 0o755); err != nil {
		n.t.Fatal(err)
	}
}

func (n *fakeNode) check() Report {
	n.t.Helper()
	if err := n.cfg.Validate(); err != nil {
		n.t.Fatal(err)
	}
	r := Check(n.cfg)
	for _, f := range r.Findings {
		if f.ID == IDReadError {
			n.t.Errorf("unexpected read error: %+v", f)
		}
	}
	return r
}

func findings(r Report, id string) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.ID == id {
			out = append(out, f)
		}
	}
	return out
}

func one(t *testing.T, r Report, id string) Finding {
	t.Helper()
	fs := findings(r, id)
	if len(fs) != 1 {
		t.Fatalf("%d %s findings, want 1; all findings:\n%s", len(fs), id, dump(r))
	}
	return fs[0]
}

func none(t *testing.T, r Report, id string) {
	t.Helper()
	if fs := findings(r, id); len(fs) != 0 {
		t.Fatalf("unexpected %s findings:\n%s", id, dump(r))
	}
}

func dump(r Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "  %s %s: %s\n", f.Severity, f.ID, f.Summary)
		for _, e := range f.Evidence {
			fmt.Fprintf(&b, "      %s\n", e)
		}
	}
	return b.String()
}

func evidenceHas(t *testing.T, f Finding, subs ...string) {
	t.Helper()
	all := strings.Join(f.Evidence, "\n")
	for _, s := range subs {
		if !strings.Contains(all, s) {
			t.Errorf("%s evidence lacks %q:\n%s", f.ID, s, all)
		}
	}
}

const (
	uidA = "22612ffb-4523-4958-b6dd-a80bd35fd325"
	uidB = "d06203b5-9e78-4247-b80c-43ffaea99318"
	uidC = "0f2c6b1e-2d7a-4a8e-9d7e-3b1c5a6e7f80"
)

// Seed 000/002: pid_max raised to 1000000, kubepods still 49152.
func TestStaleKubepodsFires(t *testing.T) {
	n := newNode(t, 1000000, 3000000, 49000)
	n.cgroup("kubepods", 48000, "49152")
	n.cgroup("kubepods/burstable", 47000, "max")
	n.cgroup("kubepods/burstable/pod"+uidA, 47000, "max")
	n.cgroup("kubepods/burstable/pod"+uidA+"/8e8c5f5293", 46999, "max")
	r := n.check()
	f := one(t, r, IDStaleKubepods)
	if f.Severity != Risk || !r.HasRisk() {
		t.Fatalf("severity %s, HasRisk %v", f.Severity, r.HasRisk())
	}
	evidenceHas(t, f, "cgroup /kubepods:", "49152", "kernel.pid_max = 1000000", filepath.Join(n.cfg.CgroupRoot, "kubepods/pids.max"))
	if !strings.Contains(f.Fix, "systemctl restart kubelet") {
		t.Errorf("fix: %q", f.Fix)
	}
	// The same node is also at 98% of kubepods.
	if u := findings(r, IDUsageAbove80); len(u) != 1 || !strings.Contains(u[0].Summary, "/kubepods ") {
		t.Errorf("usage findings: %+v", u)
	}
}

func TestStaleKubepodsAbovePidMax(t *testing.T) {
	n := newNode(t, 32768, 192730, 500)
	n.cgroup("kubepods.slice", 400, "65535")
	r := n.check()
	f := one(t, r, IDStaleKubepods)
	if !strings.Contains(f.Summary, "above kernel.pid_max 32768") {
		t.Fatalf("summary: %s", f.Summary)
	}
	evidenceHas(t, f, "cgroup /kubepods.slice:", "65535")
	// and pid_max is below what kubepods allows
	g := one(t, r, IDPidMaxBelowPods)
	if g.Severity != Risk || !strings.Contains(g.Summary, "kubepods pids.max 65535") {
		t.Fatalf("pid-max-below-pod-limits: %+v", g)
	}
}

func TestStaleKubepodsQuiet(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		pidMax, threads, max int64
	}{
		{"pid_max minus reserved", 32768, 192730, 32000},
		{"equal to pid_max", 32768, 192730, 32768},
		{"half of pid_max", 32768, 192730, 16384},
		// newer kubelets use min(pid_max, threads-max): a small node with
		// systemd's pid_max 4194304 gets about threads-max.
		{"threads-max smaller", 4194304, 31000, 30000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, tc.pidMax, tc.threads, 100)
			n.cgroup("kubepods", 50, fmt.Sprint(tc.max))
			r := n.check()
			none(t, r, IDStaleKubepods)
			none(t, r, IDPidMaxBelowPods)
			if r.HasRisk() {
				t.Fatalf("risks:\n%s", dump(r))
			}
		})
	}
	t.Run("kubepods unlimited", func(t *testing.T) {
		n := newNode(t, 1000000, 3000000, 100)
		n.cgroup("kubepods", 50, "max")
		none(t, n.check(), IDStaleKubepods)
	})
}

// Pods' limits add up to more than pid_max while kubepods is unlimited.
func TestPidMaxBelowPodLimitsSum(t *testing.T) {
	n := newNode(t, 32768, 192730, 3000)
	n.cgroup("kubepods", 2000, "max")
	n.cgroup("kubepods/burstable", 2000, "max")
	n.cgroup("kubepods/besteffort", 0, "max")
	for i := 0; i < 9; i++ {
		n.cgroup(fmt.Sprintf("kubepods/burstable/pod%08x-0000-4000-8000-000000000000", i), 200, "4096")
	}
	n.cgroup("kubepods/pod"+uidA, 10, "4096") // Guaranteed
	r := n.check()
	f := one(t, r, IDPidMaxBelowPods)
	if !strings.Contains(f.Summary, "add up to 40960") || !strings.Contains(f.Summary, "kubepods is unlimited") {
		t.Fatalf("summary: %s", f.Summary)
	}
	evidenceHas(t, f, "10 pods", "40960", "kernel.pid_max = 32768", "… and 5 more pods")
	none(t, r, IDPodWithoutLimit)
}

func TestPidMaxBelowPodLimitsQuiet(t *testing.T) {
	t.Run("sum below pid_max", func(t *testing.T) {
		n := newNode(t, 32768, 192730, 3000)
		n.cgroup("kubepods", 2000, "max")
		for i := 0; i < 7; i++ {
			n.cgroup(fmt.Sprintf("kubepods/pod%08x-0000-4000-8000-000000000000", i), 200, "4096")
		}
		none(t, n.check(), IDPidMaxBelowPods)
	})
	t.Run("one pod unlimited", func(t *testing.T) {
		n := newNode(t, 32768, 192730, 3000)
		n.cgroup("kubepods", 2000, "max")
		for i := 0; i < 9; i++ {
			n.cgroup(fmt.Sprintf("kubepods/pod%08x-0000-4000-8000-000000000000", i), 200, "4096")
		}
		n.cgroup("kubepods/pod"+uidA, 10, "max")
		r := n.check()
		none(t, r, IDPidMaxBelowPods)
		one(t, r, IDPodWithoutLimit)
	})
	t.Run("kubepods limited below pid_max", func(t *testing.T) {
		n := newNode(t, 32768, 192730, 3000)
		n.cgroup("kubepods", 2000, "32000")
		for i := 0; i < 9; i++ {
			n.cgroup(fmt.Sprintf("kubepods/pod%08x-0000-4000-8000-000000000000", i), 200, "4096")
		}
		none(t, n.check(), IDPidMaxBelowPods)
	})
}

// Seed 001/003: the node itself near pid_max.
func TestUsageAbove80Node(t *testing.T) {
	n := newNode(t, 32768, 192730, 31600)
	n.cgroup("kubepods", 30000, "max")
	n.cgroup("kubepods/burstable", 30000, "max")
	n.cgroup("kubepods/burstable/pod"+uidA, 28000, "max")
	n.cgroup("kubepods/burstable/pod"+uidB, 2000, "max")
	n.podLog("shop", "leaky-app-7d9f", uidA)
	r := n.check()
	f := one(t, r, IDUsageAbove80)
	if f.Severity != Risk || !strings.Contains(f.Summary, "96% of kernel.pid_max 32768") {
		t.Fatalf("finding: %+v", f)
	}
	evidenceHas(t, f, "31600", "pod shop/leaky-app-7d9f: 28000 tasks", "of which in pods (/kubepods pids.current): 30000")
	// the leaking pod is listed first
	i := slices.IndexFunc(f.Evidence, func(s string) bool { return strings.Contains(s, "leaky-app") })
	j := slices.IndexFunc(f.Evidence, func(s string) bool { return strings.Contains(s, "pod"+uidB) })
	if i < 0 || j < 0 || i > j {
		t.Fatalf("top pods not biggest first: %q", f.Evidence)
	}
}

func TestUsageAbove80ThreadsMax(t *testing.T) {
	n := newNode(t, 4194304, 30000, 25000)
	r := n.check()
	f := one(t, r, IDUsageAbove80)
	if !strings.Contains(f.Summary, "of kernel.threads-max 30000") {
		t.Fatalf("summary: %s", f.Summary)
	}
}

// Seed 004: kubepods 64413 of 65535; and a pod near its own limit.
func TestUsageAbove80Cgroups(t *testing.T) {
	n := newNode(t, 4194304, 8000000, 66000)
	n.cgroup("kubepods", 64413, "65535")
	n.cgroup("kubepods/besteffort", 0, "max")
	n.cgroup("kubepods/burstable", 64413, "max")
	for i := 0; i < 30; i++ {
		n.cgroup(fmt.Sprintf("kubepods/burstable/pod%08x-0000-4000-8000-000000000000", i), 1700+int64(i), "max")
	}
	n.cgroup("kubepods/pod"+uidC, 3500, "4096")
	n.podLog("kube-system", "calico-node-56bgm", uidC)
	r := n.check()
	us := findings(r, IDUsageAbove80)
	if len(us) != 2 {
		t.Fatalf("want 2 usage findings:\n%s", dump(r))
	}
	k := us[slices.IndexFunc(us, func(f Finding) bool { return strings.Contains(f.Summary, "kubepods cgroup /kubepods ") })]
	if !strings.Contains(k.Summary, "64413 of its pids.max 65535 (98%)") {
		t.Fatalf("kubepods usage: %s", k.Summary)
	}
	evidenceHas(t, k, "pod pod0000001d-0000-4000-8000-000000000000: 1729 tasks")
	p := us[slices.IndexFunc(us, func(f Finding) bool { return strings.Contains(f.Summary, "pod kube-system/calico-node-56bgm") })]
	if !strings.Contains(p.Summary, "(85%)") || !strings.Contains(p.Fix, "podPidsLimit") {
		t.Fatalf("pod usage: %+v", p)
	}
}

func TestUsageAbove80Quiet(t *testing.T) {
	n := newNode(t, 32768, 192730, 26000) // 79%
	n.cgroup("kubepods", 10000, "32000")
	n.cgroup("kubepods/pod"+uidA, 3000, "4096") // 73%
	n.cgroup("system.slice/kubelet.service", 30, "4915")
	r := n.check()
	none(t, r, IDUsageAbove80)
	if r.HasRisk() {
		t.Fatalf("risks:\n%s", dump(r))
	}
}

func TestPodWithoutPidsLimit(t *testing.T) {
	n := newNode(t, 4194304, 8000000, 900)
	// systemd driver shape
	n.cgroup("kubepods.slice", 800, "max")
	n.cgroup("kubepods.slice/kubepods-burstable.slice", 700, "max")
	n.cgroup("kubepods.slice/kubepods-besteffort.slice", 100, "max")
	n.cgroup("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+strings.ReplaceAll(uidA, "-", "_")+".slice", 700, "max")
	n.cgroup("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+strings.ReplaceAll(uidB, "-", "_")+".slice", 100, "4096")
	n.cgroup("kubepods.slice/kubepods-pod"+strings.ReplaceAll(uidC, "-", "_")+".slice", 0, "max")
	n.podLog("default", "web-0", uidA)
	r := n.check()
	f := one(t, r, IDPodWithoutLimit)
	if f.Severity != Warning || !strings.HasPrefix(f.Summary, "2 pods") {
		t.Fatalf("finding: %+v", f)
	}
	evidenceHas(t, f, "pod default/web-0: pids.max max, pids.current 700", "pod"+uidC)
	if strings.Contains(strings.Join(f.Evidence, "\n"), uidB) {
		t.Errorf("limited pod listed: %q", f.Evidence)
	}
	if r.HasRisk() {
		t.Fatalf("a warning is not a risk:\n%s", dump(r))
	}
	// the pods were classified with their QoS classes
	var qos []string
	for _, cg := range r.Cgroups {
		if cg.Role == RolePod {
			qos = append(qos, cg.QoS+":"+cg.Pod.UID)
		}
	}
	want := []string{"besteffort:" + uidB, "burstable:" + uidA, "guaranteed:" + uidC}
	slices.Sort(qos)
	if !slices.Equal(qos, want) {
		t.Fatalf("pods: %v, want %v", qos, want)
	}
}

func TestPodWithoutPidsLimitQuiet(t *testing.T) {
	n := newNode(t, 4194304, 8000000, 900)
	n.cgroup("kubepods", 800, "4000000")
	n.cgroup("kubepods/burstable", 800, "max")
	n.cgroup("kubepods/burstable/pod"+uidA, 800, "max")
	none(t, n.check(), IDPodWithoutLimit)
}

// Seed 000: limits.conf says 65535, limits.d/20-nproc.conf 4096 for "*".
func TestLowNprocFires(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.file("etc/security/limits.conf", "# comment\n* soft nofile 65535\n* hard nofile 65535\n* soft nproc 65535\n* hard nproc 65535\n")
	n.file("etc/security/limits.d/20-nproc.conf", "# Default limit for number of user's processes\n\n*          soft    nproc     4096\nroot       soft    nproc     unlimited\n")
	r := n.check()
	f := one(t, r, IDLowNproc)
	if f.Severity != Warning || !strings.Contains(f.Summary, "is 4096 for non-root users") || !strings.Contains(f.Summary, "applies only to") {
		t.Fatalf("finding: %+v", f)
	}
	evidenceHas(t, f, "20-nproc.conf:3", "* hard nproc 65535")
	if r.HasRisk() {
		t.Fatalf("nproc is no risk:\n%s", dump(r))
	}
	if len(findings(r, IDLimitNproc)) != 3 { // * soft, * hard, root soft
		t.Fatalf("nproc info lines:\n%s", dump(r))
	}
}

func TestLowNprocRoot(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.file("etc/security/limits.conf", "root - nproc 1024\n")
	f := one(t, n.check(), IDLowNproc)
	if !strings.Contains(f.Summary, "1024 for root") || !strings.Contains(f.Summary, "does not enforce") {
		t.Fatalf("finding: %+v", f)
	}
}

func TestLowNprocQuiet(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.file("etc/security/limits.conf", "* soft nproc 4096\n@wheel soft nproc 10\nalice hard nproc 5\n")
	n.file("etc/security/limits.d/90-nproc.conf", "* soft nproc 65536\nroot hard nproc unlimited\n")
	none(t, n.check(), IDLowNproc)
}

func TestTasksMax(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	// kubelet: percentage set in a drop-in → ≈4915 of pid_max 32768
	n.file("lib/systemd/system/kubelet.service", "[Unit]\nDescription=kubelet\n[Service]\nExecStart=/usr/bin/kubelet\n")
	n.file("etc/systemd/system/kubelet.service.d/10-kubeadm.conf", "[Service]\nTasksMax=15%\n")
	n.cgroup("system.slice/kubelet.service", 40, "4915")
	// containerd: infinity
	n.file("lib/systemd/system/containerd.service", "[Service]\nDelegate=yes\nTasksMax=infinity\n")
	// docker: 4096 in the vendor unit, overridden to infinity in /etc
	n.file("lib/systemd/system/docker.service", "[Service]\nTasksMax=4096\n")
	n.file("etc/systemd/system/docker.service.d/override.conf", "[Service]\nTasksMax=infinity\n")
	// crio: a same-named drop-in in /etc hides the one in /lib
	n.file("lib/systemd/system/crio.service", "[Service]\nExecStart=/usr/bin/crio\n")
	n.file("lib/systemd/system/crio.service.d/10-tasks.conf", "[Service]\nTasksMax=512\n")
	n.file("etc/systemd/system/crio.service.d/10-tasks.conf", "[Service]\nTasksMax=20000\n")
	// calico-node: listed, not warned about
	n.file("etc/systemd/system/calico-node.service", "[Service]\nTasksMax=100\n")
	r := n.check()
	f := one(t, r, IDLowTasksMax)
	none(t, r, IDLowNproc) // a unit's TasksMax= is not limits.conf's nproc: its own ID
	if f.Severity != Warning || !strings.Contains(f.Summary, "TasksMax=15% (≈4915 tasks) for kubelet.service: applies only to") {
		t.Fatalf("finding: %+v", f)
	}
	evidenceHas(t, f, "10-kubeadm.conf:2", "pids.max = 4915, pids.current = 40")
	got := map[string]string{}
	for _, u := range r.Systemd {
		got[u.Unit] = fmt.Sprintf("%s=%d", u.TasksMax, u.Effective)
	}
	want := map[string]string{
		"kubelet.service":     "15%=4915",
		"containerd.service":  "infinity=-1",
		"docker.service":      "infinity=-1",
		"crio.service":        "20000=20000",
		"calico-node.service": "100=100",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("TasksMax = %v, want %v", got, want)
	}
}

func TestTasksMaxQuiet(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.file("lib/systemd/system/kubelet.service", "[Service]\nTasksMax=4096\n")
	// a masked unit does not count
	if err := os.MkdirAll(filepath.Join(n.dir, "etc/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/null", filepath.Join(n.dir, "etc/systemd/system/kubelet.service")); err != nil {
		t.Fatal(err)
	}
	// an empty assignment resets to the default: not "set"
	n.file("lib/systemd/system/containerd.service", "[Service]\nTasksMax=100\n")
	n.file("lib/systemd/system/containerd.service.d/50.conf", "[Service]\nTasksMax=\n")
	// TasksMax in another section is not the service's
	n.file("lib/systemd/system/docker.service", "[Unit]\nTasksMax=100\n[Service]\nExecStart=/usr/bin/dockerd \\\n  --foo \\\n  --bar\n")
	r := n.check()
	none(t, r, IDLowTasksMax)
	if len(r.Systemd) != 0 {
		t.Fatalf("units: %+v", r.Systemd)
	}
}

func TestEffectiveTasksMax(t *testing.T) {
	node := Node{PidMax: 32768, ThreadsMax: 192730}
	for v, want := range map[string]int64{
		"infinity": -1, "4096": 4096, "15%": 4915, "100%": 32767, "10‰": 327, "1.5%": 491, "lots": 0, "-3": 0,
	} {
		if got := effectiveTasksMax(v, node); got != want {
			t.Errorf("effectiveTasksMax(%q) = %d, want %d", v, got, want)
		}
	}
	if got := effectiveTasksMax("50%", Node{PidMax: 4194304, ThreadsMax: 30000}); got != 15000 {
		t.Errorf("threads-max bound: %d", got)
	}
}

// A healthy node: info lines only, the whole picture, no risk or warning.
func TestHealthyNode(t *testing.T) {
	n := newNode(t, 4194304, 8000000, 2000)
	n.cgroup("kubepods", 1500, "4190000")
	n.cgroup("kubepods/burstable", 1500, "max")
	n.cgroup("kubepods/burstable/pod"+uidA, 1500, "4096")
	n.cgroup("kubepods/burstable/pod"+uidA+"/ctr", 1500, "max")
	n.podLog("default", "web-0", uidA)
	r := n.check()
	if r.HasRisk() || r.Count(Warning) != 0 {
		t.Fatalf("findings:\n%s", dump(r))
	}
	var paths []string
	for _, cg := range r.Cgroups {
		paths = append(paths, cg.Role+":"+cg.Path)
	}
	want := []string{"root:/", "kubepods:/kubepods", "qos:/kubepods/burstable", "pod:/kubepods/burstable/pod" + uidA}
	if !slices.Equal(paths, want) {
		t.Fatalf("cgroups %v, want %v", paths, want)
	}
	if len(findings(r, IDLimitPidMax)) != 1 || len(findings(r, IDLimitThreadsMax)) != 1 || len(findings(r, IDLimitPidsCgroup)) != 4 {
		t.Fatalf("info lines:\n%s", dump(r))
	}
}

// Kubepods below an ancestor (kubelet --cgroup-root, or the e2e test's
// own subtree) is found with Config.Kubepods, and the ancestors are listed.
func TestKubepodsElsewhere(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.cgroup("forkwatch-e2e-1234", 0, "max")
	n.cgroup("forkwatch-e2e-1234/kubepods", 0, "1000")
	n.cgroup("forkwatch-e2e-1234/kubepods/burstable", 0, "max")
	n.cgroup("forkwatch-e2e-1234/kubepods/burstable/pod"+uidA, 0, "max")
	n.cfg.Kubepods = "forkwatch-e2e-1234/kubepods"
	r := n.check()
	if r.Kubepods != "/forkwatch-e2e-1234/kubepods" {
		t.Fatalf("kubepods %q", r.Kubepods)
	}
	f := one(t, r, IDStaleKubepods)
	evidenceHas(t, f, "/forkwatch-e2e-1234/kubepods", "1000", "32768")
	if r.Cgroups[1].Role != RoleAncestor || r.Cgroups[1].Path != "/forkwatch-e2e-1234" {
		t.Fatalf("cgroups: %+v", r.Cgroups)
	}

	n.cgroup("forkwatch-e2e-1234/kubepods", 0, "32000")
	none(t, n.check(), IDStaleKubepods)
}

func TestNoKubepods(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	r := n.check()
	one(t, r, IDNoKubepods)
	if r.HasRisk() || len(r.Cgroups) != 1 {
		t.Fatalf("report: %+v", r)
	}
}

func TestReadErrors(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.file("proc/loadavg", "garbage\n")
	r := Check(n.cfg)
	if len(findings(r, IDReadError)) != 1 || r.Node.PidMax != 32768 || r.Node.Tasks != -1 {
		t.Fatalf("report: %+v\n%s", r.Node, dump(r))
	}
}

func TestValidate(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.cgroup("kubepods", 0, "max")
	good := n.cfg
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"proc root", func(c *Config) { c.ProcRoot = n.dir }, "pid_max"},
		{"cgroup root missing", func(c *Config) { c.CgroupRoot = filepath.Join(n.dir, "nope") }, "does not exist (--cgroup-root)"},
		{"cgroup root a file", func(c *Config) { c.CgroupRoot = filepath.Join(n.dir, "proc/loadavg") }, "not a directory"},
		{"kubepods missing", func(c *Config) { c.Kubepods = "/kubepods.slice" }, "no such cgroup"},
		{"kubepods is root", func(c *Config) { c.Kubepods = "/" }, "below the root of the hierarchy (--kubepods)"},
	} {
		c := good
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	good.Kubepods = "kubepods"
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
}

// The text report at 80, 120 and 200 columns: a table, then findings with
// evidence and fix, no line reaching the last column (some terminals wrap
// a line that fills it), long paths broken after a slash only where the
// terminal forces it. A systemd row shows the unit, the setting and its
// whole value, and the file that sets it where the width allows.
func TestWriteText(t *testing.T) {
	n := newNode(t, 1000000, 3000000, 49500)
	n.cgroup("kubepods", 49152, "49152")
	n.cgroup("kubepods/burstable", 49000, "max")
	n.cgroup("kubepods/burstable/pod"+uidA, 49000, "max")
	n.cgroup("kubepods/pod"+uidB, 152, "max")
	n.podLog("kube-system", "calico-node-56bgm-with-a-very-long-name-indeed", uidA)
	n.file("etc/security/limits.d/20-nproc.conf", "* soft nproc 4096\n")
	n.file("lib/systemd/system/containerd.service", "[Unit]\nDescription=containerd container runtime\n"+strings.Repeat("#\n", 32)+"[Service]\nTasksMax=infinity\n")
	n.file("lib/systemd/system/kubelet.service", "[Service]\nExecStart=/usr/bin/kubelet\n")
	n.file("etc/systemd/system/kubelet.service.d/10-kubeadm-tasks-max-for-this-node.conf", "[Service]\nTasksMax=15%\n")
	r := n.check()
	for _, width := range []int{80, 120, 200} {
		var b bytes.Buffer
		if err := r.WriteText(&b, width); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		t.Logf("%d columns:\n%s", width, out)
		for _, l := range strings.Split(out, "\n") {
			if utf8.RuneCountInString(l) >= width {
				t.Errorf("%d: line of %d columns: %q", width, utf8.RuneCountInString(l), l)
			}
			if strings.TrimRight(l, " ") != l {
				t.Errorf("%d: trailing blanks: %q", width, l)
			}
		}
		for _, s := range []string{
			"LIMIT", "kernel.pid_max", "49500", "1000000", "  /kubepods ", "    burstable",
			"RISK stale-kubepods-limit:", "  evidence:", "    - cgroup /kubepods:", "  fix: restart kubelet",
			"WARNING low-nproc-limit:", "WARNING low-tasks-max:", "2 risks, 2 warnings.",
			"\n  containerd.service TasksMax=infinity ", "\n  kubelet.service TasksMax=15% ",
		} {
			if !strings.Contains(out, s) {
				t.Errorf("%d: text lacks %q", width, s)
			}
		}
		// The source where it fits: the row's label and the 27 columns of
		// numbers within width-1.
		for _, src := range []string{" (containerd.service:36)", " (10-kubeadm-tasks-max-for-this-node.conf:2)"} {
			i := strings.Index(out, src)
			if fits := width >= 80+40; fits != (i >= 0) {
				t.Errorf("%d: source %q shown: %v", width, src, i >= 0)
			}
		}
		if width == 80 && !strings.Contains(out, "      kube-system/calico-nod…a-very-long-name-indeed ") {
			t.Errorf("%d: the long pod name not cut in its middle", width)
		}
		if width == 200 && !strings.Contains(out, "      kube-system/calico-node-56bgm-with-a-very-long-name-indeed ") {
			t.Errorf("%d: the long pod name cut", width)
		}
		if strings.Contains(out, "INFO limit-") {
			t.Errorf("table rows repeated as info lines")
		}
		if strings.Index(out, "RISK") > strings.Index(out, "WARNING") {
			t.Errorf("risks not first")
		}
	}
}

// A path longer than the terminal's line is broken after a slash, the rest
// on the next line; one that fits is left whole.
func TestWriteWrappedBreaksLongPaths(t *testing.T) {
	long := "(/sys/fs/cgroup/pids/kubepods/burstable/pod" + uidA + "/0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9/pids.max)"
	var b bytes.Buffer
	writeWrapped(&b, "    - ", "cgroup x: pids.max = 20 "+long, 79, 79)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	var joined string
	for i, l := range lines {
		if utf8.RuneCountInString(l) > 79 {
			t.Errorf("line of %d columns: %q", utf8.RuneCountInString(l), l)
		}
		if i > 0 && !strings.HasPrefix(l, "      ") {
			t.Errorf("continuation not indented: %q", l)
		}
		if i > 0 && strings.Contains(joined, "(/sys") && !strings.HasSuffix(lines[i-1], "/") {
			t.Errorf("path broken elsewhere than after a slash: %q", lines[i-1])
		}
		joined += strings.TrimSpace(l)
	}
	if !strings.Contains(joined, long) {
		t.Errorf("the path is not all there:\n%s", b.String())
	}
	b.Reset()
	writeWrapped(&b, "    - ", "cgroup x: "+long, 99, 199)
	if !strings.Contains(b.String(), "\n      "+long+"\n") {
		t.Errorf("a path that fits the terminal was broken:\n%s", b.String())
	}
}

func TestJSON(t *testing.T) {
	n := newNode(t, 32768, 192730, 100)
	n.cgroup("kubepods", 10, "1000")
	n.cgroup("kubepods/burstable", 10, "max")
	n.cgroup("kubepods/burstable/pod"+uidA, 10, "max")
	n.podLog("default", "web-0", uidA)
	r := n.check()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"node", "cgroups", "findings", "systemd", "nproc", "kubepods", "cgroup_root"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	for _, s := range []string{
		`"node":{"pid_max":32768,"threads_max":192730,"tasks":100}`,
		`"pod":{"namespace":"default","name":"web-0","uid":"` + uidA + `"}`,
		`"severity":"risk","id":"stale-kubepods-limit"`,
		`"systemd":[]`, `"nproc":[]`,
	} {
		if !strings.Contains(string(b), s) {
			t.Errorf("JSON lacks %s:\n%s", s, b)
		}
	}
}

// The real node, read only: every limit reads without error.
func TestLiveNode(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Skipf("no readable node limits here: %v", err)
	}
	r := Check(cfg)
	for _, f := range r.Findings {
		if f.ID == IDReadError {
			t.Errorf("read error on the live node: %+v", f)
		}
	}
	if r.Node.PidMax <= 0 || r.Node.Tasks <= 0 {
		t.Fatalf("node: %+v", r.Node)
	}
	var b bytes.Buffer
	if err := r.WriteText(&b, DefaultWidth); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", b.String())
}

// The pods with the most tasks show their largest groups of threads, read
// from their cgroups' processes and /proc; the others are not read.
func TestThreadsOfBusiestPods(t *testing.T) {
	n := newNode(t, 4194304, 1000000, 3000)
	n.cgroup("kubepods", 2000, "max")
	n.cgroup("kubepods/burstable", 2000, "max")
	uids := []string{uidA, uidB, "cccccccc-0000-0000-0000-000000000003", "dddddddd-0000-0000-0000-000000000004"}
	tasks := []int64{1650, 40, 3, 200}
	for i, uid := range uids {
		pod := "kubepods/burstable/pod" + uid
		n.cgroup(pod, tasks[i], "max")
		pid := 1000 * (i + 1)
		n.file(filepath.Join("cgroup", pod, "ctr"+fmt.Sprint(i), "cgroup.procs"), fmt.Sprintln(pid))
		n.file(fmt.Sprintf("proc/%d/comm", pid), "java\n")
		names := []string{"java"}
		for k := 0; k < int(tasks[i])-1; k++ {
			name := fmt.Sprintf("pool-3-thread-%d", k)
			if k%100 == 0 {
				name = fmt.Sprintf("GC Thread#%d", k)
			}
			names = append(names, name[:min(len(name), 15)])
		}
		for k, name := range names {
			n.file(fmt.Sprintf("proc/%d/task/%d/comm", pid, pid+k), name+"\n")
		}
	}
	n.podLog("shop", "cart-7d9", uidA)
	r := n.check()
	read := map[string][]ThreadGroup{}
	for _, cg := range r.Cgroups {
		if cg.Threads != nil {
			read[cg.Pod.UID] = cg.Threads
		}
	}
	if len(read) != 3 || read[uids[2]] != nil {
		t.Fatalf("threads read for %v; want the 3 pods with the most tasks", read)
	}
	want := []ThreadGroup{{"pool-*-thread-*", "java", 1000, 1632}, {"GC Thread#*", "java", 1000, 17}, {"java", "java", 1000, 1}}
	if fmt.Sprint(read[uidA]) != fmt.Sprint(want) {
		t.Fatalf("groups of the busiest pod %+v, want %+v", read[uidA], want)
	}
	var b bytes.Buffer
	if err := r.WriteText(&b, DefaultWidth); err != nil {
		t.Fatal(err)
	}
	want1 := "threads of the pods with the most tasks\n  shop/cart-7d9, 1,650 tasks\n    pool-*-thread-* ×1,632 in java[1000]\n    GC Thread#* ×17 in java[1000]\n    java ×1 in java[1000]\n  pod" + uids[3] + ", 200 tasks\n"
	if !strings.Contains(b.String(), want1) {
		t.Fatalf("text:\n%s\nwant:\n%s", b.String(), want1)
	}
	j, _ := json.Marshal(r)
	if !strings.Contains(string(j), `"max":-1,"threads":[{"name":"pool-*-thread-*","comm":"java","pid":1000,"count":1632},`) {
		t.Fatalf("JSON: %s", j)
	}
}
