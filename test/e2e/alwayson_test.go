package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The always-on case: a DaemonSet's forkwatch on a node with 500 pods,
// scraped continuously (20 times a second, where Prometheus comes every
// 15 s or so), while one pod's threads fail to start at ~40k
// clones a second for 5 s (a Go or Java service at its pids.max, retrying).
// Every failure is reported (nothing lost), and every scrape is answered:
// the metrics render what the sampler already knows and never wait for the
// reader draining the ring buffer, nor it for them.
//
// The failures come from make bench's generator (bench worker-fail: thread
// clones from a loop with no stack of its own, the cheapest failing fork),
// so that the rate is the kernel's, not the generator's.
func TestAlwaysOnUnderFailureStorm(t *testing.T) {
	requireRoot(t)
	if os.Getenv("FORKWATCH_VM") != "" {
		t.Log("runs on the host only: under emulation the storm's rate is a fraction of a node's")
		return
	}
	bench := filepath.Join(t.TempDir(), "bench")
	build := exec.Command("go", "build", "-o", bench, "./test/bench")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the failure generator: %v\n%s", err, out)
	}

	tr := newTestTree(t)
	const quiet = 500
	var pods []pod
	for i := 0; i < quiet; i++ {
		p := pod{Namespace: "shop", Name: fmt.Sprintf("web-%d", i), UID: newPodUID()}
		pods = append(pods, p)
		tr.mkdir(tr.base + "/kubepods/besteffort/pod" + p.UID + "/" + randomHex(32))
	}
	stormPod := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	pods = append(pods, stormPod)
	podCg := tr.base + "/kubepods/burstable/pod" + stormPod.UID
	ctr := randomHex(32)
	ctrDir := tr.mkdir(podCg + "/" + ctr)

	addr := freePort(t)
	fw := startForkwatch(t, "-o", "json", "--metrics-addr", addr, "--pod-logs-dir", podLogsDir(t, pods...))

	// Scrape until the storm's failures are all reported. A loop with no
	// pause at all would only measure two cores shared by a scraper
	// burning one and the reader, not whether one waits for the other.
	const scrapeEvery = 50 * time.Millisecond
	var scrapes, scrapeErrors atomic.Int64
	var lastScrapeErr atomic.Value
	stop := make(chan struct{})
	var scraping sync.WaitGroup
	scraping.Add(1)
	go func() {
		defer scraping.Done()
		client := &http.Client{Timeout: 30 * time.Second} // a hang, not a slow answer
		for {
			select {
			case <-stop:
				return
			case <-time.After(scrapeEvery):
			}
			resp, err := client.Get("http://" + addr + "/metrics")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %s", resp.Status)
				}
			}
			scrapes.Add(1)
			if err != nil {
				scrapeErrors.Add(1)
				lastScrapeErr.Store(err.Error())
			}
		}
	}()
	stopScraping := func() {
		select {
		case <-stop:
		default:
			close(stop)
			scraping.Wait()
		}
	}
	defer stopScraping()

	// Two generators, 20k attempts/s each, in the pod's container; the
	// pod's pids.max is set to its count once they are in, so every
	// attempt fails.
	type result struct{ Failures, Created, Ns int64 }
	var ins []io.WriteCloser
	var outs []*bufio.Reader
	for i := 0; i < 2; i++ {
		cmd := exec.Command(bench, "worker-fail", "--cgroup", ctrDir, "--rate", "20000", "--duration", "5s")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
		r := bufio.NewReader(out)
		if line, err := r.ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("failure generator: %q, %v", line, err)
		}
		ins, outs = append(ins, in), append(outs, r)
	}
	current, err := os.ReadFile(filepath.Join(tr.root, podCg, "pids.current"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(current)))
	// Always on (--metrics-addr): the failure hooks wait for a limit within
	// reach where they would tax every syscall (tracepoint mode). The pod's
	// limit, lowered to its tasks, is read within a second.
	armed, policy := fw.hooksArmed()
	if policy == "pressure" && armed {
		t.Fatalf("always on, no limit within reach: the failure hooks are armed from the start")
	}
	tr.setMax(podCg, n)
	// A process joins the full pod (what an exec probe or a starting
	// container does): the counters see a task moved within reach of a
	// limit and have the hooks attached.
	joiner := exec.Command("sleep", "60")
	if err := joiner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { joiner.Process.Kill(); joiner.Wait() })
	if err := os.WriteFile(filepath.Join(ctrDir, "cgroup.procs"), []byte(strconv.Itoa(joiner.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	fw.waitFor("the failure hooks armed", func() bool { armed, _ := fw.hooksArmed(); return armed })
	joiner.Process.Kill()
	joiner.Wait()
	for _, in := range ins {
		io.WriteString(in, "go\n")
	}
	var failures int64
	var ns int64
	for i, r := range outs {
		line, err := r.ReadString('\n')
		var res result
		if err != nil || json.Unmarshal([]byte(line), &res) != nil {
			t.Fatalf("failure generator %d: %q, %v", i, line, err)
		}
		failures += res.Failures
		ns = max(ns, res.Ns)
	}
	if failures == 0 {
		t.Fatal("the generators saw no failure")
	}
	rate := float64(failures) / (float64(ns) / 1e9)

	// forkwatch writes one line per failure: count them by the container's
	// cgroup, without parsing 200,000 objects on every look.
	reported := func() (n int64) {
		for _, l := range fw.output() {
			if strings.Contains(l, `"event":"fork_failed"`) && strings.Contains(l, ctr) {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for reported() < failures && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	stopScraping()
	fw.stop()

	got := reported()
	lost := int64(0)
	for _, e := range fw.events(func(e event) bool { return e.Event == "events_lost" }) {
		lost = int64(e.Total)
	}
	t.Logf("%d pods, %d failures at %.0f/s, %d reported, %d lost; %d scrapes, %d unanswered",
		len(pods), failures, rate, got, lost, scrapes.Load(), scrapeErrors.Load())
	if got != failures || lost != 0 {
		t.Errorf("forkwatch reported %d of the %d failures the generators saw (%d lost)", got, failures, lost)
	}
	if scrapeErrors.Load() != 0 || scrapes.Load() == 0 {
		t.Errorf("%d of %d scrapes went unanswered during the storm; last: %v", scrapeErrors.Load(), scrapes.Load(), lastScrapeErr.Load())
	}
}
