package output

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/output/node/rates"
	"github.com/forkwatch/forkwatch/tracer"
)

// A fork refused by policy (EPERM: seccomp, an LSM) is counted apart from
// the fork failures the ForkFailures alert pages on.
func TestMetricsCountDeniedApart(t *testing.T) {
	m := NewMetrics(nil, "test")
	who := node.Who{Pod: &kube.Pod{Namespace: "shop", Name: "cart-7d9", UID: "1c7b6a9e-8d0f-4b4e-9a55-2f2f3b4f7d10"}, ContainerID: "0a1b2c3d4e5f6789"}
	for _, f := range []tracer.Failure{
		{Cause: tracer.CausePidsCgroup, Errno: "EAGAIN", Limit: &tracer.Limit{Cgroup: "/kubepods", Current: 10, Max: 10}},
		{Cause: tracer.CausePidsCgroup, Errno: "EAGAIN", Limit: &tracer.Limit{Cgroup: "/kubepods", Current: 10, Max: 10}},
		{Cause: tracer.CauseDenied, Errno: "EPERM"},
	} {
		if err := m.Failure(&node.Failure{Failure: f, Who: who}); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP forkwatch_fork_denied_total fork/clone/vfork/clone3 calls refused by policy (EPERM or EACCES: seccomp, an LSM, a missing capability), by calling pod and container, while the failure hooks are attached (forkwatch_failure_hooks_armed). Not a limit: not in forkwatch_fork_failures_total.
# TYPE forkwatch_fork_denied_total counter
forkwatch_fork_denied_total{container="0a1b2c3d4e5f",namespace="shop",pod="cart-7d9"} 1
# HELP forkwatch_fork_failures_total Failed fork/clone/vfork/clone3 calls, by calling pod and container, the limit that refused them (cause) and, for pids_cgroup, the refusing cgroup.
# TYPE forkwatch_fork_failures_total counter
forkwatch_fork_failures_total{cause="pids_cgroup",container="0a1b2c3d4e5f",limit_cgroup="/kubepods",namespace="shop",pod="cart-7d9"} 2
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "forkwatch_fork_failures_total", "forkwatch_fork_denied_total"); err != nil {
		t.Fatal(err)
	}
}

// The collector renders one snapshot: per-container counts (a pod recreated
// under its name shares its series), the pids cgroups, the node, forecasts,
// losses and spikes — and nothing it would have to read at scrape time.
func TestMetricsRenderSnapshot(t *testing.T) {
	m := NewMetrics([]tracer.Attachment{
		{Program: "fw_tp_clone", Hook: "tracepoint/syscalls/sys_exit_clone", Mode: tracer.ModeTracepoint, OnDemand: true},
		{Program: "fw_btf_fork", Hook: "tp_btf/sched_process_fork", Mode: tracer.ModeTracepoint},
	}, "1.2.3")
	// Armed once, then disarmed: the on-demand hook is not attached now.
	m.Attached(tracer.ModeTracepoint, nil, tracer.HooksState{Policy: tracer.HooksPressure})
	m.FailureHooks(time.Now(), tracer.HooksState{Armed: true, Policy: tracer.HooksPressure})
	m.FailureHooks(time.Now(), tracer.HooksState{Policy: tracer.HooksPressure})
	web := &kube.Pod{Namespace: "shop", Name: "web-0", UID: "22612ffb-4523-4958-b6dd-a80bd35fd325"}
	webAgain := &kube.Pod{Namespace: "shop", Name: "web-0", UID: "d06203b5-9e78-4247-b80c-43ffaea99318"}
	unnamed := &kube.Pod{UID: "0f2c6b1e-2d7a-4a8e-9d7e-3b1c5a6e7f80"}
	hist := rates.Histogram{Counts: make([]uint64, len(rates.Buckets)+1)}
	hist.Counts[2], hist.Sum, hist.Count = 3, 12, 3 // three seconds at 4/s
	snap := &node.Snapshot{
		Time: time.Unix(1_700_000_000, 0),
		Node: limits.Node{PidMax: 32768, ThreadsMax: 192730, Tasks: 812},
		Containers: []node.ContainerCounts{
			{Counts: tracer.TaskCounts{ThreadsCreated: 100, ProcessesCreated: 10, ThreadsExited: 90, ProcessesExited: 9}},
			{Who: node.Who{Pod: web, ContainerID: "0a1b2c3d4e5f6789"}, Counts: tracer.TaskCounts{ThreadsCreated: 5, ThreadsExited: 1}},
			{Who: node.Who{Pod: webAgain, ContainerID: "0a1b2c3d4e5f0000"}, Counts: tracer.TaskCounts{ThreadsCreated: 2, ThreadsExited: 2}},
			{Who: node.Who{Pod: unnamed, ContainerID: "ffff"}, Counts: tracer.TaskCounts{ProcessesCreated: 1}},
		},
		Pods: []node.PodStats{
			{Stats: rates.Stats{Key: "pod:" + web.UID, Histogram: hist, Spiking: true, Reason: "leak"}, Who: node.Who{Pod: web}},
			{Stats: rates.Stats{Key: "/system.slice/kubelet.service", Histogram: hist}, Who: node.Who{Owner: "kubelet.service"}},
		},
		Cgroups:    []limits.Pids{{Path: "/", Current: -1, Max: -1}, {Path: "/kubepods", Current: 700, Max: 1000}, {Path: "/kubepods/besteffort", Current: 600, Max: -1}},
		Forecasts:  []node.Forecast{{Limit: "/kubepods", Current: 700, Max: 1000, Growth: 10, SecondsLeft: 30, HasForecast: true}, {Limit: "pid_max", Current: 812, Max: 32768}},
		EventsLost: 4,
		MissedRuns: map[string]uint64{"fw_btf_exit": 2},
		Errors:     1,
	}
	if err := m.Rates(snap, false); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP forkwatch_build_info forkwatch's version and Go version.
# TYPE forkwatch_build_info gauge
forkwatch_build_info{goversion="` + runtime.Version() + `",version="1.2.3"} 1
# HELP forkwatch_events_lost_total Failures that may have gone unreported: records the kernel could not hand over (a full ring or perf buffer), fork-path returns a kretprobe missed, and skipped runs of the failure programs.
# TYPE forkwatch_events_lost_total counter
forkwatch_events_lost_total 4
# HELP forkwatch_leak_suspect 1 while a pod is flagged as spiking (leak, burst or headroom; see README).
# TYPE forkwatch_leak_suspect gauge
forkwatch_leak_suspect{namespace="shop",pod="web-0",reason="leak"} 1
# HELP forkwatch_node_pid_max kernel.pid_max.
# TYPE forkwatch_node_pid_max gauge
forkwatch_node_pid_max 32768
# HELP forkwatch_pids_current pids.current of the cgroups that bound pods: the root, kubepods, its QoS classes and each pod.
# TYPE forkwatch_pids_current gauge
forkwatch_pids_current{cgroup="/kubepods"} 700
forkwatch_pids_current{cgroup="/kubepods/besteffort"} 600
# HELP forkwatch_pids_max pids.max of those cgroups; absent where unlimited.
# TYPE forkwatch_pids_max gauge
forkwatch_pids_max{cgroup="/kubepods"} 1000
# HELP forkwatch_failure_hooks_armed 1 while the programs that see failed forks are attached, 0 while they wait for a limit to come within reach (policy pressure: tracepoint mode on an always-on forkwatch).
# TYPE forkwatch_failure_hooks_armed gauge
forkwatch_failure_hooks_armed{policy="pressure"} 0
# HELP forkwatch_failure_hooks_armings_total Times the failure hooks were attached because a limit came within reach (policy pressure).
# TYPE forkwatch_failure_hooks_armings_total counter
forkwatch_failure_hooks_armings_total 1
# HELP forkwatch_probe_attached 1 for each BPF program attached, with its hook and the mode it belongs to; 0 for a failure hook attached on demand while it is not (see forkwatch_failure_hooks_armed).
# TYPE forkwatch_probe_attached gauge
forkwatch_probe_attached{hook="tp_btf/sched_process_fork",mode="tracepoint",program="fw_btf_fork"} 1
forkwatch_probe_attached{hook="tracepoint/syscalls/sys_exit_clone",mode="tracepoint",program="fw_tp_clone"} 0
# HELP forkwatch_program_runs_missed_total Runs of a BPF program the kernel skipped because it was already running on that CPU (kernels 5.12+ count them): failures, creations or exits not seen.
# TYPE forkwatch_program_runs_missed_total counter
forkwatch_program_runs_missed_total{program="fw_btf_exit"} 2
# HELP forkwatch_scrape_errors_total Errors reading the kernel's counters or the proc and cgroup files forkwatch samples once a second (what could not be read is missing from that second's series).
# TYPE forkwatch_scrape_errors_total counter
forkwatch_scrape_errors_total 1
# HELP forkwatch_seconds_to_exhaustion Seconds until the limit runs out at its net growth over the last 10 s; present while it grows.
# TYPE forkwatch_seconds_to_exhaustion gauge
forkwatch_seconds_to_exhaustion{limit="/kubepods"} 30
# HELP forkwatch_tasks_created_total Tasks created (kind thread or process), counted in the kernel per cgroup.
# TYPE forkwatch_tasks_created_total counter
forkwatch_tasks_created_total{container="",kind="process",namespace="",pod=""} 10
forkwatch_tasks_created_total{container="",kind="thread",namespace="",pod=""} 100
forkwatch_tasks_created_total{container="0a1b2c3d4e5f",kind="process",namespace="shop",pod="web-0"} 0
forkwatch_tasks_created_total{container="0a1b2c3d4e5f",kind="thread",namespace="shop",pod="web-0"} 7
forkwatch_tasks_created_total{container="ffff",kind="process",namespace="",pod="0f2c6b1e-2d7a-4a8e-9d7e-3b1c5a6e7f80"} 1
forkwatch_tasks_created_total{container="ffff",kind="thread",namespace="",pod="0f2c6b1e-2d7a-4a8e-9d7e-3b1c5a6e7f80"} 0
# HELP forkwatch_thread_creation_rate Distribution of each pod's per-second task creation rate, one observation per second.
# TYPE forkwatch_thread_creation_rate histogram
`
	var b strings.Builder
	b.WriteString(want)
	cum := uint64(0)
	for i, le := range rates.Buckets {
		cum += hist.Counts[i]
		fmt.Fprintf(&b, "forkwatch_thread_creation_rate_bucket{namespace=\"shop\",pod=\"web-0\",le=\"%g\"} %d\n", le, cum)
	}
	b.WriteString("forkwatch_thread_creation_rate_bucket{namespace=\"shop\",pod=\"web-0\",le=\"+Inf\"} 3\nforkwatch_thread_creation_rate_sum{namespace=\"shop\",pod=\"web-0\"} 12\nforkwatch_thread_creation_rate_count{namespace=\"shop\",pod=\"web-0\"} 3\n")
	if err := testutil.CollectAndCompare(m, strings.NewReader(b.String()),
		"forkwatch_build_info", "forkwatch_events_lost_total", "forkwatch_failure_hooks_armed", "forkwatch_failure_hooks_armings_total", "forkwatch_leak_suspect", "forkwatch_node_pid_max",
		"forkwatch_pids_current", "forkwatch_pids_max", "forkwatch_probe_attached", "forkwatch_program_runs_missed_total",
		"forkwatch_scrape_errors_total", "forkwatch_seconds_to_exhaustion", "forkwatch_tasks_created_total",
		"forkwatch_thread_creation_rate"); err != nil {
		t.Fatal(err)
	}
}

// Callers outside pods (plain containers here) get at most maxOwnerSeries
// failure series; the rest are counted, not dropped silently.
func TestMetricsCountDroppedSeries(t *testing.T) {
	m := NewMetrics(nil, "test")
	for i := 0; i < maxOwnerSeries+3; i++ {
		f := node.Failure{Failure: tracer.Failure{Cause: tracer.CauseUnknown}, Who: node.Who{ContainerID: fmt.Sprintf("%012x", i), Owner: "docker"}}
		if err := m.Failure(&f); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP forkwatch_failure_series_dropped_total Failures not given a series of their own because callers outside pods already have 1000: counted here instead.
# TYPE forkwatch_failure_series_dropped_total counter
forkwatch_failure_series_dropped_total 3
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), "forkwatch_failure_series_dropped_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m, "forkwatch_fork_failures_total"); n != maxOwnerSeries {
		t.Fatalf("%d failure series, want the cap %d", n, maxOwnerSeries)
	}
}
