package e2e

import (
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
	tm := newTmux(t)
	tr := newTestTree(t)
	p := pod{Namespace: "batch", Name: "workers-0", UID: newPodUID()}
	cg := tr.base + "/kubepods/besteffort/pod" + p.UID + "/" + randomHex(32)
	tr.mkdir(cg)
	startStorm(t, "churn", "--kind", "thread", "--duration", "30s", "--cgroup", filepath.Join(tr.root, cg))

	session := "live"
	tm.start(session, 200, 50, forkwatchBin+" --pod-logs-dir "+podLogsDir(t, p)+" "+strings.Join(modeArgs(), " "))

	clock := regexp.MustCompile(`^forkwatch  (\d\d:\d\d:\d\d)  node: \d+ tasks, pid_max \d+, threads-max \d+`)
	pane := func() string { return strings.Join(tm.lines(session, false), "\n") }
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

	tm.run("send-keys", "-t", session, "C-c")
	waitUntil(t, "forkwatch to exit on Ctrl-C", func() bool { return tm.command(session) == "" }, pane)
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
