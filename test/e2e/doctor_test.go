package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// What forkwatch doctor -o json writes, as a user's program reads it.
type doctorReport struct {
	Node struct {
		PidMax     int64 `json:"pid_max"`
		ThreadsMax int64 `json:"threads_max"`
		Tasks      int64 `json:"tasks"`
	} `json:"node"`
	CgroupRoot string `json:"cgroup_root"`
	Kubepods   string `json:"kubepods"`
	Cgroups    []struct {
		Path    string `json:"path"`
		Role    string `json:"role"`
		QoS     string `json:"qos"`
		Pod     *pod   `json:"pod"`
		Current int64  `json:"current"`
		Max     int64  `json:"max"`
		Threads []struct {
			Name  string `json:"name"`
			Comm  string `json:"comm"`
			PID   int    `json:"pid"`
			Count int    `json:"count"`
		} `json:"threads"`
	} `json:"cgroups"`
	Findings []doctorFinding `json:"findings"`
}

type doctorFinding struct {
	Severity string   `json:"severity"`
	ID       string   `json:"id"`
	Summary  string   `json:"summary"`
	Evidence []string `json:"evidence"`
	Fix      string   `json:"fix"`
}

func (r doctorReport) find(id string) []doctorFinding {
	var out []doctorFinding
	for _, f := range r.Findings {
		if f.ID == id {
			out = append(out, f)
		}
	}
	return out
}

func (r doctorReport) risks() []string {
	var out []string
	for _, f := range r.Findings {
		if f.Severity == "risk" {
			out = append(out, f.ID+": "+f.Summary)
		}
	}
	return out
}

// runDoctor runs forkwatch doctor -o json with args and returns the report
// and the exit code. Exit codes 0 (no risk) and 1 (risk) print the report
// and nothing on stderr.
func runDoctor(t *testing.T, args ...string) (doctorReport, int) {
	t.Helper()
	cmd := exec.Command(forkwatchBin, append([]string{"doctor", "-o", "json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("forkwatch doctor: %v", err)
	}
	if code != 0 && code != 1 {
		t.Fatalf("forkwatch doctor %v: exit code %d\nstderr: %s", args, code, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("forkwatch doctor wrote on stderr with exit code %d: %q", code, stderr.String())
	}
	var r doctorReport
	if strings.Count(stdout.String(), "\n") != 1 {
		t.Fatalf("want one JSON object on one line, got %q", stdout.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("forkwatch doctor -o json wrote %q: %v", stdout.String(), err)
	}
	return r, code
}

// Seed 000/002 on a real cgroup tree: kubepods' pids.max far below what
// kubelet would derive from this machine's kernel.pid_max is a stale limit,
// a risk (exit code 1) whose evidence names the cgroup and both numbers;
// once kubepods' limit matches pid_max again, the finding is gone.
func TestDoctorStaleKubepods(t *testing.T) {
	requireRoot(t)
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	pidMax, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	const stale = 1000 // stale while below pid_max/2: 16384 on a 32768 machine
	if pidMax <= 2*stale {
		t.Fatalf("kernel.pid_max is %d: the test needs more than %d", pidMax, 2*stale)
	}

	tr := newTestTree(t)
	kubepods := tr.base + "/kubepods"
	uid := newPodUID()
	tr.mkdir(kubepods + "/burstable/pod" + uid)
	tr.setMax(kubepods, stale)
	logs := podLogsDir(t, pod{Namespace: "default", Name: "web-0", UID: uid})
	args := []string{"--cgroup-root", tr.root, "--kubepods", kubepods, "--pod-logs-dir", logs}

	r, code := runDoctor(t, args...)
	if code != 1 {
		t.Fatalf("exit code %d with kubepods pids.max %d and pid_max %d, want 1; risks: %q", code, stale, pidMax, r.risks())
	}
	if r.Kubepods != kubepods || r.Node.PidMax != pidMax {
		t.Fatalf("doctor looked at kubepods %q, pid_max %d; want %q, %d", r.Kubepods, r.Node.PidMax, kubepods, pidMax)
	}
	fs := r.find("stale-kubepods-limit")
	if len(fs) != 1 {
		t.Fatalf("want one stale-kubepods-limit finding, got %+v", r.Findings)
	}
	f := fs[0]
	ev := strings.Join(f.Evidence, "\n")
	if f.Severity != "risk" || !strings.Contains(ev, kubepods+":") ||
		!strings.Contains(ev, fmt.Sprint(stale)) || !strings.Contains(ev, fmt.Sprint(pidMax)) {
		t.Fatalf("finding %+v: want a risk whose evidence names %s, %d and %d", f, kubepods, stale, pidMax)
	}
	if !strings.Contains(f.Fix, "restart kubelet") {
		t.Errorf("fix %q does not say to restart kubelet", f.Fix)
	}
	// The whole path down to the pod, the pod named from its log directory.
	roles := map[string]string{}
	named := false
	for _, cg := range r.Cgroups {
		roles[cg.Path] = cg.Role
		if cg.Role == "pod" && cg.Pod != nil && cg.Pod.UID == uid && cg.Pod.Name == "web-0" && cg.QoS == "burstable" {
			named = true
		}
	}
	for path, role := range map[string]string{
		"/": "root", tr.base: "ancestor", kubepods: "kubepods",
		kubepods + "/burstable": "qos", kubepods + "/burstable/pod" + uid: "pod",
	} {
		if roles[path] != role {
			t.Errorf("cgroup %s: role %q, want %q (cgroups: %v)", path, roles[path], role, roles)
		}
	}
	if !named {
		t.Errorf("pod %s not named default/web-0: %+v", uid, r.Cgroups)
	}

	// kubelet's value on this machine: pid_max minus a few reserved PIDs
	// (32000 with pid_max 32768).
	tr.setMax(kubepods, int(pidMax-768))
	r, code = runDoctor(t, args...)
	if fs := r.find("stale-kubepods-limit"); len(fs) != 0 {
		t.Fatalf("stale-kubepods-limit with kubepods pids.max %d and pid_max %d: %+v", pidMax-768, pidMax, fs)
	}
	if code != 0 {
		// Only this machine's own state can be at risk now.
		t.Logf("exit code %d from other risks on this machine: %q", code, r.risks())
	}
}

// Bad input to doctor: one line on stderr naming the problem, exit code 2,
// nothing on stdout. (Not checkUsageError: doctor loads no BPF program, and
// programs of another forkwatch on the machine are none of its business.)
func TestDoctorBadInput(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad output", []string{"-o", "yaml"}, "must be text or json"},
		{"unknown flag", []string{"--frobnicate"}, "unknown flag: --frobnicate"},
		{"missing cgroup root", []string{"--cgroup-root", "/nonexistent/cgroup"}, "--cgroup-root"},
		{"missing kubepods", []string{"--kubepods", "/forkwatch-no-such-kubepods"}, "--kubepods"},
		{"missing pod logs dir", []string{"--pod-logs-dir", "/nonexistent/pods"}, "--pod-logs-dir"},
		{"argument", []string{"now"}, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkUsageError(t, exec.Command(forkwatchBin, append([]string{"doctor"}, tc.args...)...), tc.want)
		})
	}
}

// forkwatch doctor at 200, 120 and 80 columns on the same node: no row
// wraps, a systemd row shows the unit, the setting and its whole value,
// and the source of the setting when the terminal has room for it.
func TestDoctorFitsTerminal(t *testing.T) {
	requireRoot(t)
	tm := newTmux(t)
	n := newCrowdedNode(t)
	n.start(t, true)
	units := t.TempDir()
	for name, body := range map[string]string{
		// The setting on the 36th line, as in Debian's containerd.service.
		"containerd.service": "[Unit]\nDescription=containerd container runtime\n" + strings.Repeat("# \n", 32) + "[Service]\nTasksMax=infinity\n",
		"kubelet.service":    "[Service]\nExecStart=/usr/bin/kubelet\n",
		"kubelet.service.d/10-kubeadm-tasks-max-for-this-node.conf": "[Service]\nTasksMax=15%\n",
		"crio.service": "[Service]\nTasksMax=4096\n",
	} {
		p := filepath.Join(units, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--cgroup-root", n.tr.root, "--kubepods", n.kubepods, "--pod-logs-dir", n.logs, "--systemd-dir", units}
	wantUnits := map[string]string{ // unit → the row's unit, setting and value, and its source
		"containerd.service": "  containerd.service TasksMax=infinity (containerd.service:36)",
		"kubelet.service":    "  kubelet.service TasksMax=15% (10-kubeadm-tasks-max-for-this-node.conf:2)",
		"crio.service":       "  crio.service TasksMax=4096 (crio.service:2)",
	}
	for i, size := range screenSizes {
		session := fmt.Sprintf("doctor%d", i)
		// The report stays on the screen: cat holds the pane open.
		tm.start(session, size.cols, size.rows, fmt.Sprintf("sh -c '%s doctor %s; echo \"doctor exit $?\"; exec cat'",
			forkwatchBin, strings.Join(args, " ")))
		var lines []string
		waitUntil(t, "doctor's report", func() bool {
			lines = tm.lines(session, true)
			return strings.HasPrefix(lines[len(lines)-1], "doctor exit")
		}, func() string { return strings.Join(lines, "\n") })
		for len(lines) > 0 && lines[0] == "" {
			lines = lines[1:]
		}
		t.Logf("doctor at %d columns:\n%s", size.cols, strings.Join(lines, "\n"))
		bad := tooWide(lines, size.cols)
		if last := lines[len(lines)-1]; last != "doctor exit 1" {
			bad = append(bad, fmt.Sprintf("doctor ended with %q, want exit code 1 (the full pod is a risk)", last))
		}
		if h := lines[0]; !strings.HasPrefix(h, "LIMIT ") || !strings.HasSuffix(h, " USE") {
			bad = append(bad, fmt.Sprintf("table header not on one line: %q", h))
		}
		text := strings.Join(lines, "\n")
		for unit, row := range wantUnits {
			// The unit, the setting and its whole value always; the
			// source too where it fits.
			want := row
			if utf8.RuneCountInString(row)+27 > size.cols-1 {
				want = row[:strings.Index(row, " (")]
			}
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `( |$)`).MatchString(text) {
				bad = append(bad, fmt.Sprintf("no row %q for %s", want, unit))
			}
		}
		if !regexp.MustCompile(`(?m)^ +` + regexp.QuoteMeta(n.failing.Namespace+"/"+n.failing.Name) + ` +\d+ +20 +\d+%$`).MatchString(text) {
			bad = append(bad, "no whole row for the failing pod, ending with its use of its pids.max 20")
		}
		if !strings.Contains(text, "RISK usage-above-80:") {
			bad = append(bad, "no usage-above-80 risk for the full pod")
		}
		if len(bad) > 0 {
			t.Errorf("doctor at %d columns:\n  %s", size.cols, strings.Join(bad, "\n  "))
		}
	}
}
