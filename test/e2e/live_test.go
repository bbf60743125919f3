package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The live view on a terminal, tried as a person would: forkwatch runs in a
// tmux pane while a pod churns threads; the pane shows the table with that
// pod, and the table updates.
func TestLiveViewInTmux(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		if isCI() {
			t.Fatal("tmux is not installed (.ci/run installs it)")
		}
		t.Skip("needs tmux")
	}
	tr := newTestTree(t)
	p := pod{Namespace: "batch", Name: "workers-0", UID: newPodUID()}
	cg := tr.base + "/kubepods/besteffort/pod" + p.UID + "/" + randomHex(32)
	tr.mkdir(cg)
	startStorm(t, "churn", "--kind", "thread", "--duration", "30s", "--cgroup", filepath.Join(tr.root, cg))

	session := "forkwatch-e2e-" + randomHex(4)
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50",
		forkwatchBin+" --pod-logs-dir "+podLogsDir(t, p)+" "+strings.Join(modeArgs(), " "))
	t.Cleanup(func() { _ = exec.Command("tmux", "kill-session", "-t", session).Run() })

	clock := regexp.MustCompile(`^forkwatch  (\d\d:\d\d:\d\d)  node: \d+ tasks, pid_max \d+, threads-max \d+`)
	pane := func() string { return tmux("capture-pane", "-p", "-t", session) }
	var first string
	waitUntil(t, "the table with the churning pod", func() bool {
		s := pane()
		m := clock.FindStringSubmatch(s)
		if m == nil || !strings.Contains(s, "POD") || !strings.Contains(s, "batch/workers-0") || !strings.Contains(s, "RUNS OUT IN") {
			return false
		}
		first = m[1]
		return true
	}, pane)
	waitUntil(t, "the table to update", func() bool {
		m := clock.FindStringSubmatch(pane())
		return m != nil && m[1] != first
	}, pane)
	// The churning pod's row shows thousands of creations a second.
	row := ""
	for _, l := range strings.Split(pane(), "\n") {
		if strings.Contains(l, "batch/workers-0") {
			row = l
		}
	}
	if !regexp.MustCompile(`batch/workers-0\s+\d+(\.\d)?k\s`).MatchString(row) {
		t.Fatalf("pod row %q: want a rate in thousands per second", row)
	}

	tmux("send-keys", "-t", session, "C-c")
	waitUntil(t, "forkwatch to exit on Ctrl-C", func() bool {
		out, _ := exec.Command("tmux", "list-panes", "-t", session, "-F", "#{pane_dead}#{pane_current_command}").CombinedOutput()
		return !strings.Contains(string(out), "forkwatch")
	}, pane)
	if progs := loadedForkwatchPrograms(t); len(progs) > 0 {
		t.Fatalf("programs left loaded after Ctrl-C: %v", progs)
	}
}

// waitUntil polls cond; the deadline only stops a broken run from hanging.
func waitUntil(t *testing.T, what string, cond func() bool, show func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s; the pane shows:\n%s", what, show())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
