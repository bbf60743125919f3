package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdFill starts `storm fill` and returns its summary once the target is
// full; the storm holds its children until the test ends.
func holdFill(t *testing.T, args ...string) stormSummary {
	t.Helper()
	_, out := startStorm(t, append([]string{"fill"}, args...)...)
	select {
	case l, ok := <-out:
		var s stormSummary
		if !ok || json.Unmarshal([]byte(l), &s) != nil {
			t.Fatalf("storm fill %v printed %q", args, l)
		}
		return s
	case <-time.After(60 * time.Second):
		t.Fatalf("storm fill %v never filled its target", args)
	}
	return stormSummary{}
}

// forkwatch must not be the next process to die when PIDs run out: started
// in a pids cgroup that then fills up, it still reports other processes'
// failures, still answers its metrics endpoint and still exits cleanly.
func TestSurvivesItsOwnCgroupFull(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	own := tr.base + "/forkwatch"
	tr.mkdir(own)
	tr.setMax(own, 60)
	victims := tr.base + "/kubepods/pod" + newPodUID() + "/" + randomHex(32)
	tr.mkdir(victims)
	tr.setMax(filepath.Dir(victims), 10)

	addr := freePort(t)
	fw := startForkwatch(t, "-o", "json", "--metrics-addr", addr)
	if err := os.WriteFile(filepath.Join(tr.root, own, "cgroup.procs"), []byte(strconv.Itoa(fw.cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	full := holdFill(t, "--cgroup", filepath.Join(tr.root, own), "--attempts", "5")
	if full.Failures == 0 {
		t.Fatal("forkwatch's cgroup did not fill")
	}

	s := fill(t, "--cgroup", filepath.Join(tr.root, victims), "--attempts", "30")
	mine := func(e event) bool { return e.Event == "fork_failed" && ofStorm(s)(e) }
	fw.waitFor("failures reported while forkwatch's own cgroup is full", func() bool { return len(fw.events(mine)) >= s.Failures })
	// Scrapes in parallel: each reads cgroup files in blocking syscalls,
	// which is when Go's runtime wants more OS threads than it has.
	errs := make(chan error, 20)
	for i := 0; i < cap(errs); i++ {
		go func() {
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				errs <- fmt.Errorf("metrics while full: %w", err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), "forkwatch_fork_failures_total") {
				errs <- fmt.Errorf("metrics while full: HTTP %d", resp.StatusCode)
				return
			}
			errs <- nil
		}()
	}
	for i := 0; i < cap(errs); i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	fw.stop() // SIGTERM: exit code 0, no goroutine dump
	if got := len(fw.events(mine)); got != s.Failures {
		t.Fatalf("reported %d failures, the storm saw %d", got, s.Failures)
	}
}

// The same with forkwatch inside a PID namespace whose pid_max is used up.
func TestSurvivesItsPIDNamespaceFull(t *testing.T) {
	requireRoot(t)
	if !perNamespacePidMax() {
		// Before 6.14 a namespace's pid_max is the node's: filling it
		// leaves the test itself unable to start the storm it needs.
		t.Skip("kernel.pid_max is per PID namespace only since 6.14")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal("needs unshare (util-linux) to start forkwatch in a PID namespace")
	}
	tr := newTestTree(t)
	victims := tr.base + "/kubepods/pod" + newPodUID() + "/" + randomHex(32)
	tr.mkdir(victims)
	tr.setMax(filepath.Dir(victims), 10)

	// Inside a new PID namespace with pid_max 500: forkwatch, then a storm
	// that takes every PID left and holds them.
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	addr := freePort(t)
	script := fmt.Sprintf(`echo 500 > /proc/sys/kernel/pid_max
%s -o json --metrics-addr %s --ready-file %s %s > %s/out 2> %s/err &
echo $! > %s/pid
while [ ! -e %s ]; do sleep 0.05; done
exec %s fill --attempts 5 > %s/fill`, forkwatchBin, addr, ready, strings.Join(modeArgs(), " "), dir, dir, dir, ready, stormBin, dir)
	ns := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "sh", "-c", script)
	stdin, err := ns.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = ns.Process.Kill()
		_ = ns.Wait()
	})
	var full stormSummary
	waitUntil(t, "the namespace to fill up", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "fill"))
		return json.Unmarshal(b, &full) == nil && full.Failures > 0
	}, func() string { b, _ := os.ReadFile(filepath.Join(dir, "err")); return string(b) })

	s := fill(t, "--cgroup", filepath.Join(tr.root, victims), "--attempts", "30")
	count := func() int {
		b, _ := os.ReadFile(filepath.Join(dir, "out"))
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			var e event
			if json.Unmarshal([]byte(l), &e) == nil && e.Event == "fork_failed" && ofStorm(s)(e) {
				n++
			}
		}
		return n
	}
	waitUntil(t, "failures reported while forkwatch's PID namespace is full", func() bool { return count() >= s.Failures },
		func() string { b, _ := os.ReadFile(filepath.Join(dir, "err")); return string(b) })
	if resp, err := http.Get("http://" + addr + "/metrics"); err != nil || resp.StatusCode != 200 {
		b, _ := os.ReadFile(filepath.Join(dir, "err"))
		t.Fatalf("metrics while the namespace is full: %v %v\nforkwatch's stderr:\n%s", err, resp, b)
	} else {
		resp.Body.Close()
	}

	// SIGTERM to forkwatch (its PID as the host sees it) while still full.
	pid := hostPIDOf(t, ready)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The namespace's init (the storm) does not reap it: exited is a zombie.
	exited := func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(b))
		return err != nil || len(f) > 2 && f[2] == "Z"
	}
	waitUntil(t, "forkwatch to exit on SIGTERM", exited,
		func() string { b, _ := os.ReadFile(filepath.Join(dir, "err")); return string(b) })
	if b, _ := os.ReadFile(filepath.Join(dir, "err")); strings.Contains(string(b), "goroutine ") || strings.Contains(string(b), "failed to create") {
		t.Fatalf("forkwatch died instead of exiting:\n%s", b)
	}
	if _, err := os.Stat(ready); !os.IsNotExist(err) {
		t.Fatal("forkwatch did not exit cleanly: its ready file is still there")
	}
	if got := count(); got != s.Failures {
		t.Fatalf("reported %d failures, the storm saw %d", got, s.Failures)
	}
}

// hostPIDOf finds the forkwatch process started with this --ready-file.
func hostPIDOf(t *testing.T, readyFile string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && filepath.Base(args[0]) == filepath.Base(forkwatchBin) && strings.Contains(string(b), readyFile) {
			return pid
		}
	}
	t.Fatal("forkwatch's process not found")
	return 0
}

// Loss is never silent: with a tiny ring buffer and the reader stopped,
// what forkwatch reports plus what it says it lost is what the storm saw.
func TestLossIsCounted(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	cg := tr.base + "/kubepods/pod" + newPodUID() + "/" + randomHex(32)
	tr.mkdir(cg)
	tr.setMax(filepath.Dir(cg), 10)

	fw := startForkwatch(t, "-o", "json", "--ring-buffer-size", "8192")
	if err := fw.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	s := holdFill(t, "--cgroup", filepath.Join(tr.root, cg), "--attempts", "200")
	if err := fw.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	lost := func() (count, total uint64) {
		for _, e := range fw.events(func(e event) bool { return e.Event == "events_lost" }) {
			count += e.Count
			total = max(total, e.Total)
		}
		return count, total
	}
	mine := func(e event) bool { return e.Event == "fork_failed" && ofStorm(s)(e) }
	fw.waitFor("every failure reported or counted lost", func() bool {
		n, _ := lost()
		return len(fw.events(mine))+int(n) >= s.Failures
	})
	fw.stop()
	reported := len(fw.events(mine))
	n, total := lost()
	if n == 0 || reported == 0 {
		t.Fatalf("reported %d, lost %d: want both (the buffer holds a few records)", reported, n)
	}
	// The lost count is node-wide: failures of the storm's Go runtime
	// starting a thread in the full cgroup may be among them (a few).
	others := len(fw.events(func(e event) bool { return e.Event == "fork_failed" && e.PID == s.PID && e.TID != s.TID }))
	if reported+int(n) < s.Failures || reported+int(n) > s.Failures+others+3 || total != n {
		t.Fatalf("reported %d + lost %d (total %d), the storm saw %d failures (its runtime %d more reported)", reported, n, total, s.Failures, others)
	}
	t.Logf("storm %d failures: %d reported, %d lost", s.Failures, reported, n)
}
