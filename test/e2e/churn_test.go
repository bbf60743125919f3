package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rssKiB is a process's resident set size.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// seriesCount counts the series of forkwatch's /metrics that are about the
// cgroups, pods and containers mine says are the test's own: whatever else
// runs on the machine meanwhile does not count.
func seriesCount(t *testing.T, addr string, mine func(label string) bool) int {
	t.Helper()
	_, body := httpGet(t, "http://"+addr+"/metrics")
	n := 0
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, "forkwatch_") {
			continue
		}
		for _, m := range labelValue.FindAllStringSubmatch(l, -1) {
			if mine(m[1]) {
				n++
				break
			}
		}
	}
	return n
}

var labelValue = regexp.MustCompile(`="([^"]*)"`)

// Pod churn: 1000 pod cgroups come and go, each with short-lived tasks,
// while forkwatch runs and is scraped. Its series, memory and maps follow
// the pods that exist, not the ones that came and went.
func TestCgroupChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test: skipped with -short")
	}
	requireRoot(t)
	tr := newTestTree(t)
	addr := freePort(t)
	fw := startForkwatch(t, "-o", "json", "--metrics-addr", addr)
	pid := fw.cmd.Process.Pid

	ids := map[string]bool{} // the pods' UIDs and containers' short IDs
	mine := func(v string) bool { return ids[v] || strings.Contains(v, tr.base) }
	churn := func(n int) {
		for i := 0; i < n; i++ {
			uid, ctr := newPodUID(), randomHex(32)
			ids[uid], ids[ctr[:12]] = true, true
			cg := tr.base + "/kubepods/besteffort/pod" + uid + "/" + ctr
			tr.mkdir(cg)
			out, err := exec.Command(stormBin, "churn", "--kind", "process", "--duration", "2ms", "--cgroup", filepath.Join(tr.root, cg)).CombinedOutput()
			if err != nil {
				t.Fatalf("storm churn: %v\n%s", err, out)
			}
			for _, d := range []string{cg, filepath.Dir(cg)} {
				if err := os.Remove(filepath.Join(tr.root, d)); err != nil {
					t.Fatal(err)
				}
			}
			if i%50 == 0 {
				seriesCount(t, addr, mine) // the collector resolves what it sees
			}
		}
	}
	churn(100) // warm up: caches, maps, the Go heap
	baseSeries, baseRSS := seriesCount(t, addr, mine), rssKiB(t, pid)
	churn(1000)
	// The metrics render the sampler's last second, which still saw the
	// pods of the churn's last second: give it a few samples to see them
	// gone, then count.
	series := seriesCount(t, addr, mine)
	for deadline := time.Now().Add(15 * time.Second); series > baseSeries+20 && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		series = seriesCount(t, addr, mine)
	}
	rss := rssKiB(t, pid)
	t.Logf("after 1000 pods came and went: %d series (was %d), RSS %d KiB (was %d)", series, baseSeries, rss, baseRSS)
	if series > baseSeries+20 {
		t.Errorf("series grew from %d to %d with pod churn", baseSeries, series)
	}
	if rss > baseRSS+8*1024 {
		t.Errorf("RSS grew from %d KiB to %d KiB with pod churn", baseRSS, rss)
	}
	fw.stop()
}
