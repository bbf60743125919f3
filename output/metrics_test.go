package output

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/forkwatch/forkwatch/tracer"
	"github.com/forkwatch/forkwatch/tracer/kube"
)

type fakeSource struct{}

func (fakeSource) TaskCounts() (map[uint64]tracer.TaskCounts, error) { return nil, nil }
func (fakeSource) EventsLost() (uint64, error)                       { return 0, nil }
func (fakeSource) MissedRuns() map[string]uint64                     { return nil }
func (fakeSource) Mode() tracer.Mode                                 { return tracer.ModeTracepoint }
func (fakeSource) Attached() []tracer.Attachment                     { return nil }

// A fork refused by policy (EPERM: seccomp, an LSM) is counted apart from
// the fork failures the ForkFailures alert pages on.
func TestMetricsCountDeniedApart(t *testing.T) {
	root := tracer.CgroupRoot{Path: t.TempDir()}
	m := NewMetrics(fakeSource{}, root, tracer.NewCgroupPaths(root.Path), &tracer.Attributor{})
	pod := &kube.Pod{Namespace: "shop", Name: "cart-7d9", UID: "1c7b6a9e-8d0f-4b4e-9a55-2f2f3b4f7d10"}
	for _, f := range []tracer.Failure{
		{Cause: tracer.CausePidsCgroup, Errno: "EAGAIN", Who: tracer.Who{Pod: pod, ContainerID: "0a1b2c3d4e5f6789"}, Limit: &tracer.Limit{Cgroup: "/kubepods", Current: 10, Max: 10}},
		{Cause: tracer.CausePidsCgroup, Errno: "EAGAIN", Who: tracer.Who{Pod: pod, ContainerID: "0a1b2c3d4e5f6789"}, Limit: &tracer.Limit{Cgroup: "/kubepods", Current: 10, Max: 10}},
		{Cause: tracer.CauseDenied, Errno: "EPERM", Who: tracer.Who{Pod: pod, ContainerID: "0a1b2c3d4e5f6789"}},
	} {
		if err := m.Failure(&f); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP forkwatch_fork_denied_total fork/clone/vfork/clone3 calls refused by policy (EPERM or EACCES: seccomp, an LSM, a missing capability), by calling pod and container. Not a limit: not in forkwatch_fork_failures_total.
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
