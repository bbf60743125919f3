package output

import (
	"bytes"
	"strings"
	"testing"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/output/node/rates"
)

func snapshot() *node.Snapshot {
	leaker := node.PodStats{
		Stats: rates.Stats{Key: "pod:1", Rate1s: 300, Rate10s: 290, Rate60s: 120, Net1s: 280, Net10s: 280, Net60s: 90,
			P50: 50, P99: 300, Max: 310, Tasks: 4120, Limit: &rates.Limit{Name: "/kubepods", Headroom: 52},
			Spiking: true, Reason: "leak", Baseline: 10},
		Who:    node.Who{Pod: &kube.Pod{Namespace: "shop", Name: "cart-7d9", UID: "1"}},
		Cgroup: "/kubepods/burstable/pod1",
	}
	pool := node.PodStats{
		Stats:  rates.Stats{Key: "pod:2", Rate1s: 21000, Rate10s: 20500, Rate60s: 20100, P50: 20000, P99: 22000, Max: 23000, Tasks: 12},
		Who:    node.Who{Pod: &kube.Pod{Namespace: "batch", Name: "workers-0", UID: "2"}},
		Cgroup: "/kubepods/besteffort/pod2",
	}
	return &node.Snapshot{
		Time: t0, Node: limits.Node{PidMax: 32768, ThreadsMax: 192730, Tasks: 32000},
		Pods: []node.PodStats{pool, leaker},
		Forecasts: []node.Forecast{
			{Limit: "/kubepods", Current: 49100, Max: 49152, Growth: 280, SecondsLeft: 0.19, HasForecast: true},
			{Limit: "pid_max", Current: 32000, Max: 32768, Growth: 0},
		},
		Transitions: []node.SpikeTransition{{Start: true, Pod: leaker}},
	}
}

func TestJSONRates(t *testing.T) {
	var out bytes.Buffer
	w := NewJSON(&out)
	if err := w.Rates(snapshot(), false); err != nil {
		t.Fatal(err)
	}
	w.Flush(t0)
	want := `{"time":"2026-03-04T14:02:11Z","event":"spike","state":"start","pod":{"namespace":"shop","name":"cart-7d9","uid":"1"},"cgroup":"/kubepods/burstable/pod1","reason":"leak","rate":300,"baseline":10,"net_growth":280,"tasks":4120,"limit":{"name":"/kubepods","headroom":52}}` + "\n"
	if got := strings.ReplaceAll(out.String(), t0.Format("2006-01-02T15:04:05Z07:00"), "2026-03-04T14:02:11Z"); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	out.Reset()
	s := snapshot()
	s.Transitions = nil
	w.Rates(s, true)
	w.Flush(t0)
	for _, frag := range []string{`"event":"rates"`, `"node":{"pid_max":32768,"threads_max":192730,"tasks":32000}`,
		`"rate_10s":20500`, `"net_10s":280`, `"p99":300`, `"spiking":true,"reason":"leak"`,
		`"forecasts":[{"limit":"/kubepods","current":49100,"max":49152,"growth":280,"seconds_left":0.19}`} {
		if !strings.Contains(out.String(), frag) {
			t.Errorf("rates object lacks %s:\n%s", frag, out.String())
		}
	}
}

func TestTextRatesSummary(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.Rates(snapshot(), true)
	got := out.String()
	for _, frag := range []string{
		"SPIKE  shop/cart-7d9  leak: 300/s created (usual 10/s), net +280/s",
		"batch/workers-0", "21k", "LEAK shop/cart-7d9", "/kubepods (52 left)",
		"49100/49152", "pid_max",
	} {
		if !strings.Contains(got, frag) {
			t.Errorf("summary lacks %q:\n%s", frag, got)
		}
	}
	if strings.Index(got, "batch/workers-0") > strings.Index(got, "LEAK shop/cart-7d9") {
		t.Errorf("pods not in the order given (fastest first):\n%s", got)
	}
	out.Reset()
	w.Rates(&node.Snapshot{Time: t0}, false)
	if out.Len() != 0 {
		t.Errorf("printed a summary off the interval: %q", out.String())
	}
}

// On a terminal the view is redrawn in place and failures go below it.
func TestTextLiveRedraw(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.Live = true
	w.Failure(calicoFailure(t0, 4121))
	w.Close()
	if out.Len() != 0 {
		t.Fatalf("live view printed a failure outside the table: %q", out.String())
	}
	w.Rates(snapshot(), false)
	got := out.String()
	if !strings.HasPrefix(got, "\x1b[H\x1b[2J") || !strings.Contains(got, "RECENT FAILURES AND SPIKES") ||
		!strings.Contains(got, "EAGAIN  calico-node[4121]") || !strings.Contains(got, "SPIKE  shop/cart-7d9") {
		t.Fatalf("live view:\n%s", got)
	}
}
