// Package e2e runs the real forkwatch binary against real fork failures on
// the kernel of the machine it runs on: real cgroups with small pids.max,
// a PID namespace with a small pid_max, a user at its ulimit -u.
//
// The tests need root. Without it they skip, except under CI=true, where a
// skip is a failure: CI must exercise the kernel paths.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

var (
	forkwatchBin string // FORKWATCH_BIN, or built by TestMain
	stormBin     string // FORKWATCH_STORM, or built by TestMain
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "forkwatch-e2e-")
	if err != nil {
		panic(err)
	}
	// The not-root test runs the binary as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	forkwatchBin, stormBin = os.Getenv("FORKWATCH_BIN"), os.Getenv("FORKWATCH_STORM")
	for _, b := range []struct {
		path *string
		pkg  string
	}{{&forkwatchBin, "./cmd/forkwatch"}, {&stormBin, "./test/storm"}} {
		if *b.path != "" {
			continue
		}
		*b.path = filepath.Join(dir, filepath.Base(b.pkg))
		cmd := exec.Command("go", "build", "-o", *b.path, b.pkg)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func isCI() bool { return os.Getenv("CI") == "true" }

// requireRoot skips a test that needs root, or fails it under CI.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if isCI() {
		t.Fatal("needs root, and CI=true forbids skipping: run the suite as root")
	}
	t.Skip("needs root to load BPF programs and create cgroups")
}

// pidsHierarchy returns the mount holding the pids controller and whether it
// is cgroup v2.
func pidsHierarchy(t *testing.T) (string, bool) {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
		return "/sys/fs/cgroup/pids", false
	}
	b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err == nil && slices.Contains(strings.Fields(string(b)), "pids") {
		return "/sys/fs/cgroup", true
	}
	t.Fatal("no cgroup hierarchy with the pids controller on this machine")
	return "", false
}

// testTree is a cgroup subtree a test owns under the pids hierarchy:
// <root>/forkwatch-e2e-<random>/…; it is removed when the test ends.
type testTree struct {
	t    *testing.T
	root string // mount of the hierarchy
	base string // the test's own top cgroup, relative to root
	v2   bool
}

func newTestTree(t *testing.T) *testTree {
	t.Helper()
	root, v2 := pidsHierarchy(t)
	tr := &testTree{t: t, root: root, base: "/forkwatch-e2e-" + randomHex(4), v2: v2}
	tr.mkdir(tr.base)
	t.Cleanup(tr.remove)
	return tr
}

// mkdir creates the cgroup at rel (relative to the hierarchy root) and its
// parents. On v2 it enables the pids controller from the root down to rel's
// parent: a level can only enable what the level above gives it.
func (tr *testTree) mkdir(rel string) string {
	tr.t.Helper()
	dir := filepath.Join(tr.root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if tr.v2 {
		parts := strings.Split(strings.Trim(rel, "/"), "/")
		p := tr.root
		for i := 0; i < len(parts); i++ {
			if err := os.WriteFile(filepath.Join(p, "cgroup.subtree_control"), []byte("+pids"), 0); err != nil {
				tr.t.Fatalf("enabling pids below %s: %v", p, err)
			}
			p = filepath.Join(p, parts[i])
		}
	}
	return dir
}

func (tr *testTree) setMax(rel string, max int) {
	tr.t.Helper()
	if err := os.WriteFile(filepath.Join(tr.root, rel, "pids.max"), []byte(fmt.Sprint(max)), 0); err != nil {
		tr.t.Fatal(err)
	}
}

// remove kills whatever is left in the tree and removes it, deepest first.
func (tr *testTree) remove() {
	top := filepath.Join(tr.root, tr.base)
	if !removeCgroupTree(top) {
		tr.t.Errorf("could not remove test cgroup %s", top)
	}
}

// removeCgroupTree kills whatever is left in the cgroup at top and below it
// and removes them, deepest first; it reports whether top is gone.
func removeCgroupTree(top string) bool {
	var dirs []string
	_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 50; try++ {
			b, _ := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				var pid int
				fmt.Sscan(f, &pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			if err := os.Remove(dirs[i]); err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_, err := os.Lstat(top)
	return err != nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// newPodUID returns a random pod UID as kubelet writes it.
func newPodUID() string {
	h := randomHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// podLogsDir makes a kubelet-like /var/log/pods with one directory per pod.
func podLogsDir(t *testing.T, pods ...pod) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range pods {
		if err := os.MkdirAll(filepath.Join(dir, p.Namespace+"_"+p.Name+"_"+p.UID, "app"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The JSON objects forkwatch writes, as a user's program would read them.
type pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

type limit struct {
	Cgroup       string  `json:"cgroup"`
	PIDNamespace uint64  `json:"pid_namespace"`
	UID          *uint32 `json:"uid"`
	Current      int64   `json:"current"`
	Max          int64   `json:"max"`
}

type event struct {
	Time        time.Time `json:"time"`
	Event       string    `json:"event"`
	Syscall     string    `json:"syscall"`
	Errno       string    `json:"errno"`
	Ret         int       `json:"ret"`
	PID         int       `json:"pid"`
	TID         int       `json:"tid"`
	Comm        string    `json:"comm"`
	Cgroup      string    `json:"cgroup"`
	Pod         *pod      `json:"pod"`
	ContainerID string    `json:"container_id"`
	Owner       string    `json:"owner"`
	Cause       string    `json:"cause"`
	Limit       *limit    `json:"limit"`
	Count       uint64    `json:"count"`
	Total       uint64    `json:"total"`
	Mode        string    `json:"mode"`
	IntoCgroup  bool      `json:"into_cgroup"`
	Programs    []struct {
		Program, Hook, Mode, Fallback string
		OnDemand                      bool `json:"on_demand"`
	} `json:"programs"`
	// failure_hooks objects, and the attached object's failure_hooks.
	Armed        bool       `json:"armed"`
	Policy       string     `json:"policy"`
	Reason       string     `json:"reason"`
	WithinReach  time.Time  `json:"within_reach"`
	FailureHooks *hooksJSON `json:"failure_hooks"`
}

type hooksJSON struct {
	Armed  bool   `json:"armed"`
	Policy string `json:"policy"`
	Reason string `json:"reason"`
}

// hooksArmed is the latest word on the failure hooks: the attached object's,
// then each failure_hooks object's.
func (fw *forkwatch) hooksArmed() (armed bool, policy string) {
	for _, e := range fw.events(func(e event) bool { return e.Event == "attached" || e.Event == "failure_hooks" }) {
		if e.FailureHooks != nil {
			armed, policy = e.FailureHooks.Armed, e.FailureHooks.Policy
		} else {
			armed, policy = e.Armed, e.Policy
		}
	}
	return armed, policy
}

// forkwatch is a running forkwatch process.
type forkwatch struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr bytes.Buffer
	mu     sync.Mutex
	lines  []string
	done   chan struct{}
	exit   error
}

// modeArgs are the flags that run forkwatch the way the environment asks,
// so that the same scenarios run in every mode (test/vm/e2e.sh):
// FORKWATCH_MODE=auto|fentry|tracepoint|kprobe (--mode), FORKWATCH_RINGBUF=off
// (--perf-buffer: a perf event array instead of the ring buffer),
// FORKWATCH_BTF=FILE (--btf: CO-RE against a BTF file, not the kernel's) and
// FORKWATCH_FAILURE_HOOKS=always|pressure (--failure-hooks).
func modeArgs() []string {
	var args []string
	if m := os.Getenv("FORKWATCH_MODE"); m != "" {
		args = append(args, "--mode", m)
	}
	if os.Getenv("FORKWATCH_RINGBUF") == "off" {
		args = append(args, "--perf-buffer")
	}
	if f := os.Getenv("FORKWATCH_BTF"); f != "" {
		args = append(args, "--btf", f)
	}
	if h := os.Getenv("FORKWATCH_FAILURE_HOOKS"); h != "" {
		args = append(args, "--failure-hooks", h)
	}
	return args
}

// startForkwatch runs forkwatch with args (and modeArgs) and returns once
// every probe is attached (its --ready-file exists). The test's cleanup
// stops it.
func startForkwatch(t *testing.T, args ...string) *forkwatch {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	fw := &forkwatch{t: t, done: make(chan struct{})}
	args = append(slices.Clip(args), modeArgs()...)
	fw.cmd = exec.Command(forkwatchBin, append(args, "--ready-file", ready)...)
	fw.cmd.Stderr = &fw.stderr
	out, err := fw.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			fw.mu.Lock()
			fw.lines = append(fw.lines, sc.Text())
			fw.mu.Unlock()
		}
		fw.exit = fw.cmd.Wait()
		close(fw.done)
	}()
	t.Cleanup(func() { fw.stop() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			if slices.Contains(args, "json") {
				fw.checkMode()
			}
			return fw
		}
		select {
		case <-fw.done:
			t.Fatalf("forkwatch exited before attaching: %v\n%s", fw.exit, fw.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("forkwatch did not attach within 30s\n%s", fw.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkMode checks that a forkwatch started with -o json attached in the
// mode FORKWATCH_MODE asked for.
func (fw *forkwatch) checkMode() {
	fw.t.Helper()
	want := os.Getenv("FORKWATCH_MODE")
	if want == "" || want == "auto" {
		return
	}
	attached := func(e event) bool { return e.Event == "attached" }
	fw.waitFor("the attached object", func() bool { return len(fw.events(attached)) > 0 })
	if got := fw.events(attached)[0].Mode; got != want {
		fw.t.Fatalf("forkwatch attached in %s mode, want %s", got, want)
	}
}

// stop sends SIGTERM and checks forkwatch exits cleanly with code 0.
func (fw *forkwatch) stop() {
	fw.t.Helper()
	select {
	case <-fw.done:
		return
	default:
	}
	_ = fw.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-fw.done:
	case <-time.After(30 * time.Second):
		_ = fw.cmd.Process.Kill()
		<-fw.done
		fw.t.Fatalf("forkwatch did not exit within 30s of SIGTERM\n%s", fw.stderr.String())
	}
	if fw.exit != nil {
		fw.t.Errorf("forkwatch exited with %v after SIGTERM\nstderr:\n%s", fw.exit, fw.stderr.String())
	}
	if strings.Contains(fw.stderr.String(), "goroutine ") {
		fw.t.Errorf("forkwatch printed a goroutine dump:\n%s", fw.stderr.String())
	}
}

// output returns every stdout line so far.
func (fw *forkwatch) output() []string {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return slices.Clone(fw.lines)
}

// events parses JSON Lines output and returns the objects for which keep
// is true.
func (fw *forkwatch) events(keep func(event) bool) []event {
	fw.t.Helper()
	var out []event
	for _, l := range fw.output() {
		var e event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			fw.t.Fatalf("forkwatch wrote a line that is not JSON: %q: %v", l, err)
		}
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls until cond holds or forkwatch exits; the deadline only stops
// a broken run from hanging, it is not what the test asserts.
func (fw *forkwatch) waitFor(what string, cond func() bool) {
	fw.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			fw.t.Fatalf("gave up waiting for %s; forkwatch wrote:\n%s\nstderr:\n%s",
				what, strings.Join(fw.output(), "\n"), fw.stderr.String())
		}
		select {
		case <-fw.done:
			fw.t.Fatalf("forkwatch exited (%v) while waiting for %s\n%s", fw.exit, what, fw.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// allFailures waits until forkwatch has reported the storm's failures (the
// fork_failed objects keep selects), stops forkwatch, and checks it reported
// exactly as many as the storm saw: nothing lost, nothing invented.
func (fw *forkwatch) allFailures(s stormSummary, keep func(event) bool) []event {
	fw.t.Helper()
	mine := func(e event) bool { return e.Event == "fork_failed" && keep(e) }
	fw.waitFor(fmt.Sprintf("%d failures", s.Failures), func() bool { return len(fw.events(mine)) >= s.Failures })
	fw.stop()
	got := fw.events(mine)
	if len(got) != s.Failures {
		fw.t.Fatalf("forkwatch reported %d failures, the storm saw %d", len(got), s.Failures)
	}
	return got
}

// ofStorm selects the failures of the storm's forking thread: its Go
// runtime's own threads can fail to start in the full cgroup too.
func ofStorm(s stormSummary) func(event) bool {
	return func(e event) bool { return e.PID == s.PID && e.TID == s.TID }
}

// stormSummary is what `storm fill` prints.
type stormSummary struct {
	PID      int            `json:"pid"`
	TID      int            `json:"tid"`
	Filled   int            `json:"filled"`
	Attempts int            `json:"attempts"`
	Failures int            `json:"failures"`
	Errnos   map[string]int `json:"errnos"`
}

// fill runs `storm fill` with args to completion (it releases its children
// as soon as it has printed its summary) and returns the summary.
func fill(t *testing.T, args ...string) stormSummary {
	t.Helper()
	cmd := exec.Command(stormBin, append([]string{"fill"}, args...)...)
	cmd.Stdin = strings.NewReader("") // release at once
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("storm fill %v: %v\n%s", args, err, stderr.String())
	}
	var s stormSummary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("storm fill printed %q: %v", out, err)
	}
	if s.Failures == 0 {
		t.Fatalf("storm fill %v saw no failure: %+v", args, s)
	}
	return s
}

// loadedForkwatchPrograms lists BPF programs in the kernel whose names
// carry forkwatch's prefix (every program in bpf/ has it; a unit test in
// tracer/ says so): after forkwatch exits there must be none. The kernel
// frees a program asynchronously after its last user is gone, so it looks
// again for a few seconds before reporting what is left.
func loadedForkwatchPrograms(t *testing.T) []string {
	t.Helper()
	var left []string
	for try := 0; try < 100; try++ {
		if left = findForkwatchPrograms(); len(left) == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return left
}

func findForkwatchPrograms() []string {
	var found []string
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err == nil && strings.HasPrefix(info.Name, "fw_") {
			found = append(found, fmt.Sprintf("%s (id %d)", info.Name, id))
		}
	}
	return found
}
