package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startPrometheus runs Debian's Prometheus server on loopback, scraping
// target every second, and returns its address.
func startPrometheus(t *testing.T, target string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if isCI() {
			t.Fatal("prometheus is not installed (.ci/run installs Debian's package)")
		}
		t.Skip("needs Debian's prometheus package")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: forkwatch
    honor_labels: true
    static_configs:
      - targets: [%q]
`, target)), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitUntil(t, "Prometheus to be ready", func() bool {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, logs.String)
	return addr
}

// promQuery returns the value of a PromQL query that yields one sample.
func promQuery(t *testing.T, prom, q string) (float64, bool) {
	t.Helper()
	code, body := httpGet(t, "http://"+prom+"/api/v1/query?query="+url.QueryEscape(q))
	if code != 200 {
		t.Fatalf("query %s: HTTP %d: %s", q, code, body)
	}
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Data.Result) != 1 {
		return 0, false
	}
	v, err := strconv.ParseFloat(r.Data.Result[0].Value[1].(string), 64)
	return v, err == nil
}

// forkwatch serves metrics while a real Prometheus server scrapes it; fork
// failures in a pod show up in Prometheus with the right pod, cause and
// count, and the exposition passes promtool and matches deploy/metrics.txt.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	requireRoot(t)
	tr := newTestTree(t)
	p := pod{Namespace: "kube-system", Name: "calico-node-56bgm", UID: newPodUID()}
	ctr := randomHex(32)
	kubepods := tr.base + "/kubepods"
	ctrCg := kubepods + "/burstable/pod" + p.UID + "/" + ctr
	tr.mkdir(ctrCg)
	tr.setMax(kubepods, 20)

	addr := freePort(t)
	fw := startForkwatch(t, "-o", "json", "--metrics-addr", addr, "--pod-logs-dir", podLogsDir(t, p))
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, "http://"+addr+path); code != 200 {
			t.Fatalf("%s: HTTP %d %q once attached", path, code, body)
		}
	}
	prom := startPrometheus(t, addr)

	s := fill(t, "--cgroup", filepath.Join(tr.root, ctrCg), "--attempts", "50")
	q := fmt.Sprintf(`forkwatch_fork_failures_total{namespace=%q,pod=%q,container=%q,cause="pids_cgroup",limit_cgroup=%q}`,
		p.Namespace, p.Name, ctr[:12], kubepods)
	var got float64
	waitUntil(t, fmt.Sprintf("Prometheus to have %d failures for the pod", s.Failures), func() bool {
		v, ok := promQuery(t, prom, q)
		got = v
		return ok && int(v) == s.Failures
	}, func() string { return fmt.Sprintf("last value %v for %s", got, q) })
	if v, ok := promQuery(t, prom, `forkwatch_node_pid_max`); !ok || v < 301 {
		t.Fatalf("forkwatch_node_pid_max = %v, %v", v, ok)
	}
	if v, ok := promQuery(t, prom, fmt.Sprintf(`sum(forkwatch_tasks_created_total{pod=%q,kind="process"})`, p.Name)); !ok || int(v) < s.Filled {
		t.Fatalf("tasks created by the pod = %v, want at least the %d the storm forked", v, s.Filled)
	}

	_, exposition := httpGet(t, "http://"+addr+"/metrics")
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(exposition)
	if out, err := check.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	checkAgainstMetricsList(t, exposition)
	fw.stop()
}

// checkAgainstMetricsList: every series the binary exports is listed in
// deploy/metrics.txt with exactly its labels (the alerts and the dashboard
// are checked against that list).
func checkAgainstMetricsList(t *testing.T, exposition string) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		name, labels, _ := strings.Cut(line, " ")
		listed[name] = nil
		if labels != "" {
			listed[name] = strings.Split(labels, ",")
		}
		sort.Strings(listed[name])
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for name, fam := range families {
		if !strings.HasPrefix(name, "forkwatch_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName())
			}
			series := []string{name}
			if fam.GetType().String() == "HISTOGRAM" {
				series = []string{name + "_bucket", name + "_sum", name + "_count"}
			}
			for _, s := range series {
				want, ok := listed[s]
				if !ok {
					t.Errorf("the binary exports %s, deploy/metrics.txt does not list it", s)
					continue
				}
				got := slices.Clone(labels)
				if strings.HasSuffix(s, "_bucket") {
					got = append(got, model.BucketLabel)
				}
				sort.Strings(got)
				if !slices.Equal(got, want) {
					t.Errorf("%s has labels %v, deploy/metrics.txt says %v", s, got, want)
				}
				seen[s] = true
			}
		}
	}
	// Present only while a pod spikes or a limit grows, or once a fork was
	// refused by policy.
	conditional := map[string]bool{"forkwatch_leak_suspect": true, "forkwatch_seconds_to_exhaustion": true, "forkwatch_fork_denied_total": true}
	for name := range listed {
		if !seen[name] && !conditional[name] {
			t.Errorf("deploy/metrics.txt lists %s, the binary did not export it", name)
		}
	}
}
