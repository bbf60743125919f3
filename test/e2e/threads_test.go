package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// threadGroup is one entry of a "threads" array.
type threadGroup struct {
	Name   string `json:"name"`
	Comm   string `json:"comm"`
	PID    int    `json:"pid"`
	Count  int    `json:"count"`
	Growth int    `json:"growth_10s"`
}

// namedThreads is a running test/glibc/namedthreads.
type namedThreads struct {
	pid   int
	lines <-chan string // its stdout after the first line
	done  chan struct{} // closed once it has exited and been reaped
}

// startNamedThreads runs test/glibc/namedthreads in the cgroup dir with
// args and returns once its steady threads run; the test's cleanup kills
// it.
func startNamedThreads(t *testing.T, bin, cgroup string, args ...string) *namedThreads {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--cgroup", cgroup}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	p := &namedThreads{lines: lines, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	select {
	case l, ok := <-lines:
		var started struct{ PID int }
		if !ok || json.Unmarshal([]byte(l), &started) != nil || started.PID != cmd.Process.Pid {
			t.Fatalf("namedthreads printed %q (%v)\n%s", l, ok, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("namedthreads did not start its threads")
	}
	p.pid = cmd.Process.Pid
	return p
}

// What is leaking, said everywhere forkwatch speaks: a service in a pod
// names its threads as a JVM does (names longer than the 15 bytes the
// kernel keeps, cut to them) and leaks one pool next to steady named
// threads and threads it never named, while another pod churns a worker
// pool and a third leaks and then exits while flagged. The spike JSON
// names the leaking group first, in the right process, with the steady
// groups after it; the live view shows it under the pod's row; the --pod
// tail's summary leads with it; doctor shows it as the largest group of
// the pod with the most tasks. The pod whose process exited stays flagged
// with no group left, and no read error.
func TestLeakingThreadsNamed(t *testing.T) {
	requireRoot(t)
	bin := buildGlibc(t, "namedthreads.c")
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is not installed (test/deps.sh installs it)")
	}
	tr := newTestTree(t)
	leaker := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	pool := pod{Namespace: "batch", Name: "workers-0", UID: newPodUID()}
	quitter := pod{Namespace: "shop", Name: "checkout-1", UID: newPodUID()}
	kubepods := tr.base + "/kubepods"
	cg := map[string]string{}
	for _, p := range []pod{leaker, pool, quitter} {
		cg[p.UID] = kubepods + "/burstable/pod" + p.UID + "/" + randomHex(32)
		tr.mkdir(cg[p.UID])
	}
	logs := podLogsDir(t, leaker, pool, quitter)

	fw := startForkwatch(t, "-o", "json", "--interval", "1s", "--pod-logs-dir", logs)
	tail := startForkwatch(t, "--pod", leaker.Name, "-n", leaker.Namespace, "--interval", "2s", "--pod-logs-dir", logs)
	session := "forkwatch-e2e-" + randomHex(4)
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50",
		forkwatchBin+" --pod-logs-dir "+logs+" "+strings.Join(modeArgs(), " "))
	t.Cleanup(func() { _ = exec.Command("tmux", "kill-session", "-t", session).Run() })

	startStorm(t, "churn", "--kind", "thread", "--duration", "60s", "--cgroup", filepath.Join(tr.root, cg[pool.UID]))
	leak := startNamedThreads(t, bin, filepath.Join(tr.root, cg[leaker.UID]), "--leak-after", "4", "--leak-rate", "40")
	quit := startNamedThreads(t, bin, filepath.Join(tr.root, cg[quitter.UID]), "--leak-after", "4", "--leak-rate", "40", "--exit-after", "14")

	// The spike JSON: the leaking group first, then the steady ones.
	type spikeObject struct {
		Event, State string
		Pod          *pod
		Threads      *[]threadGroup
	}
	spikeOf := func(p pod) *spikeObject {
		for _, l := range fw.output() {
			var s spikeObject
			if json.Unmarshal([]byte(l), &s) == nil && s.Event == "spike" && s.State == "start" && s.Pod != nil && s.Pod.UID == p.UID {
				return &s
			}
		}
		return nil
	}
	fw.waitFor("the leaking pods' spikes", func() bool { return spikeOf(leaker) != nil && spikeOf(quitter) != nil })
	for _, c := range []struct {
		p   pod
		pid int
	}{{leaker, leak.pid}, {quitter, quit.pid}} {
		s := spikeOf(c.p)
		if s.Threads == nil || len(*s.Threads) != 5 {
			t.Fatalf("spike of %s carries threads %+v, want 5 groups", c.p.Name, s.Threads)
		}
		g := *s.Threads
		first := g[0]
		if first.Name != "pool-*-thread-*" || first.Comm != "namedthreads" || first.PID != c.pid || first.Count <= 0 || first.Growth <= 0 {
			t.Fatalf("spike of %s: first group %+v, want pool-*-thread-* of namedthreads[%d] growing", c.p.Name, first, c.pid)
		}
		// The steady groups, largest first: the main thread with the 5
		// never named, then the names cut at 15 bytes.
		var steady []string
		for _, x := range g[1:] {
			if x.PID != c.pid || x.Comm != "namedthreads" || x.Growth != 0 {
				t.Fatalf("spike of %s: steady group %+v", c.p.Name, x)
			}
			steady = append(steady, fmt.Sprintf("%s ×%d", x.Name, x.Count))
		}
		if want := "[namedthreads ×6 GC Thread#* ×4 grpc-default-ex* ×3 C* CompilerThre* ×2]"; fmt.Sprint(steady) != want {
			t.Fatalf("spike of %s: steady groups %v, want %s", c.p.Name, steady, want)
		}
		t.Logf("spike of %s/%s: %+v", c.p.Namespace, c.p.Name, g)
	}

	// The quitter exits while flagged: its rates entries stay spiking,
	// with no group left.
	type ratesObject struct {
		Event string
		Pods  []struct {
			Pod     *pod
			Spiking bool
			Threads *[]threadGroup
		}
	}
	quitterEmpty := func() bool {
		select {
		case <-quit.done:
		default:
			return false
		}
		for _, l := range fw.output() {
			var r ratesObject
			if json.Unmarshal([]byte(l), &r) != nil || r.Event != "rates" {
				continue
			}
			for _, p := range r.Pods {
				if p.Pod != nil && p.Pod.UID == quitter.UID && p.Spiking && p.Threads != nil && len(*p.Threads) == 0 {
					return true
				}
			}
		}
		return false
	}
	fw.waitFor("the exited pod flagged with no thread left", quitterEmpty)

	// The --pod tail's summary leads with the leaking group.
	summary := regexp.MustCompile(fmt.Sprintf(`^  pool-\*-thread-\* ×[\d,]+ \(\+\d+/s\) in namedthreads\[%d\]$`, leak.pid))
	tail.waitFor("the tail's summary led by the leak", func() bool {
		out := tail.output()
		for i := 1; i < len(out); i++ {
			if strings.Contains(out[i-1], "  THREADS  shop/cart-7d9: ") && summary.MatchString(out[i]) {
				t.Logf("the tail's summary:\n%s", strings.Join(out[i-1:min(i+6, len(out))], "\n"))
				return true
			}
		}
		return false
	})

	// The live view: the group under the leaking pod's row, and the spike
	// line naming it.
	pane := func() string { return tmux("capture-pane", "-p", "-t", session) }
	under := regexp.MustCompile(fmt.Sprintf(`LEAK shop/cart-7d9 .*\n\s+pool-\*-thread-\* ×[\d,]+ \([+-][\d.]+/s\) in namedthreads\[%d\]`, leak.pid))
	waitUntil(t, "the leaking group under the pod's row", func() bool {
		s := pane()
		return under.MatchString(s) && strings.Contains(s, "SPIKE  shop/cart-7d9") && strings.Contains(s, "growing: pool-*-thread-* ×")
	}, pane)
	t.Logf("the live view:\n%s", pane())

	// doctor: the pod with the most tasks, its largest group.
	r, _ := runDoctor(t, "--cgroup-root", tr.root, "--kubepods", kubepods, "--pod-logs-dir", logs)
	found := false
	for _, c := range r.Cgroups {
		if c.Role == "pod" && c.Pod != nil && c.Pod.UID == leaker.UID {
			if len(c.Threads) == 0 || c.Threads[0].Name != "pool-*-thread-*" || c.Threads[0].Comm != "namedthreads" || c.Threads[0].PID != leak.pid {
				t.Fatalf("doctor on the leaking pod: %+v", c)
			}
			found = true
			t.Logf("doctor: %s has %d tasks, largest group %+v", c.Path, c.Current, c.Threads[0])
		}
	}
	if !found {
		t.Fatalf("doctor did not read the leaking pod's threads: %+v", r.Cgroups)
	}
	text, err := exec.Command(forkwatchBin, "doctor", "--cgroup-root", tr.root, "--kubepods", kubepods, "--pod-logs-dir", logs).Output()
	if !strings.Contains(string(text), "threads of the pods with the most tasks\n  shop/cart-7d9, ") ||
		!strings.Contains(string(text), "    pool-*-thread-* ×") {
		t.Fatalf("doctor's text (%v):\n%s", err, text)
	}

	// The worker pool was never flagged, so never read.
	for _, l := range fw.output() {
		var r ratesObject
		if json.Unmarshal([]byte(l), &r) != nil || r.Event != "rates" {
			continue
		}
		for _, p := range r.Pods {
			if p.Pod != nil && p.Pod.UID == pool.UID && (p.Spiking || p.Threads != nil) {
				t.Fatalf("the worker pool was flagged or read: %+v", p)
			}
		}
	}
	fw.stop()
	tail.stop()
	for _, f := range []*forkwatch{fw, tail} {
		if strings.Contains(f.stderr.String(), "warning") {
			t.Errorf("forkwatch warned: %s", f.stderr.String())
		}
	}
}
