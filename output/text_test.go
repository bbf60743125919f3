package output

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/tracer"
)

var t0 = time.Date(2026, 3, 4, 14, 2, 11, 0, time.Local)

func calicoFailure(at time.Time, tid uint32) *node.Failure {
	return &node.Failure{
		Failure: tracer.Failure{
			Time: at, Event: "fork_failed", Syscall: "clone", Errno: "EAGAIN", Ret: -11,
			PID: 4121, TID: tid, Comm: "calico-node",
			Cgroup: "/kubepods/burstable/pod1/ctr",
			Cause:  tracer.CausePidsCgroup,
			Limit:  &tracer.Limit{Cgroup: "/kubepods", Current: 49152, Max: 49152},
		},
		Who: node.Who{Pod: &kube.Pod{Namespace: "kube-system", Name: "calico-node-56bgm", UID: "1"}},
	}
}

// Go's runtime retries a failed clone 20 times, 1..20 ms apart: one line.
func TestTextFoldsRetryBurst(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	at := t0
	for i := 1; i <= 20; i++ {
		if err := w.Failure(calicoFailure(at, 4121)); err != nil {
			t.Fatal(err)
		}
		at = at.Add(time.Duration(i) * time.Millisecond)
		if err := w.Flush(at); err != nil {
			t.Fatal(err)
		}
	}
	if out.Len() != 0 {
		t.Fatalf("printed during the burst: %q", out.String())
	}
	if err := w.Flush(at.Add(foldQuiet)); err != nil {
		t.Fatal(err)
	}
	want := "14:02:11  EAGAIN ×20  calico-node[4121] (kube-system/calico-node-56bgm)  pids cgroup /kubepods at 49152/49152\n"
	if out.String() != want {
		t.Fatalf("got  %q\nwant %q", out.String(), want)
	}
}

// Two threads failing at once are two bursts, printed oldest first; a
// single failure has no count.
func TestTextSeparatesThreads(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.Failure(calicoFailure(t0.Add(time.Millisecond), 4130))
	w.Failure(calicoFailure(t0, 4121))
	w.Failure(calicoFailure(t0.Add(2*time.Millisecond), 4121))
	w.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), out.String())
	}
	if !strings.Contains(lines[0], "EAGAIN ×2  calico-node[4121] (") {
		t.Errorf("first line %q: want the 2-failure burst of tid 4121", lines[0])
	}
	if !strings.Contains(lines[1], "EAGAIN  calico-node[4121] tid 4130 (") {
		t.Errorf("second line %q: want the single failure of tid 4130", lines[1])
	}
}

// A thread that never stops retrying still shows within a second.
func TestTextFlushesLongBurst(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	at := t0
	for at.Sub(t0) < foldMaxAge {
		w.Failure(calicoFailure(at, 4121))
		at = at.Add(10 * time.Millisecond)
		w.Flush(at)
	}
	if !strings.Contains(out.String(), "EAGAIN ×100 ") {
		t.Fatalf("after %v of retries got %q, want one line of 100", foldMaxAge, out.String())
	}
}

func TestTextLimits(t *testing.T) {
	uid := uint32(1000)
	host := uint64(4026531836)
	for _, tc := range []struct {
		cause tracer.Cause
		limit *tracer.Limit
		want  string
	}{
		{tracer.CausePidMax, &tracer.Limit{PIDNamespace: host, Current: 32768, Max: 32768}, "pid_max: 32768/32768 PIDs in use"},
		{tracer.CausePidMax, &tracer.Limit{PIDNamespace: 4026532999, Current: 399, Max: 400}, "pid_max of PID namespace 4026532999: 399/400 PIDs in use"},
		{tracer.CauseRlimitNproc, &tracer.Limit{UID: &uid, Current: 50, Max: 50}, "ulimit -u of uid 1000: 50/50 tasks"},
		{tracer.CauseThreadsMax, &tracer.Limit{Current: 192730, Max: 192730}, "threads-max: 192730/192730 tasks"},
		{tracer.CauseNoMemory, nil, "out of memory"},
		{tracer.CauseUnknown, nil, "no limit at its edge (cause unknown)"},
	} {
		var out bytes.Buffer
		w := NewText(&out)
		w.HostPIDNamespace = host
		f := calicoFailure(t0, 4121)
		f.Cause, f.Limit = tc.cause, tc.limit
		w.Failure(f)
		w.Close()
		if !strings.HasSuffix(strings.TrimSpace(out.String()), ")  "+tc.want) {
			t.Errorf("%s: got %q, want it to end with %q", tc.cause, out.String(), tc.want)
		}
	}
}

func TestTextNamesCallersOutsidePods(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	f := calicoFailure(t0, 88)
	f.PID, f.Comm, f.Pod, f.Owner = 88, "kubelet", nil, "kubelet.service"
	w.Failure(f)
	w.Close()
	if !strings.Contains(out.String(), "  kubelet[88] (kubelet.service)  ") {
		t.Fatalf("got %q", out.String())
	}
}

func TestTextWarnsOfLostEvents(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.EventsLost(t0, 12, 40)
	if !strings.Contains(out.String(), "WARNING: 12 events lost") || !strings.Contains(out.String(), "40 lost since start") {
		t.Fatalf("got %q", out.String())
	}
}

// A process exiting right after its forks failed is the crash the on-call is
// looking for: its failures are printed first, then the exit.
func TestTextVictim(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	for i := 0; i < 20; i++ {
		w.Failure(calicoFailure(t0.Add(time.Duration(i)*time.Millisecond), 4130))
	}
	code := 2
	w.Task(&node.TaskEvent{
		TaskEvent: tracer.TaskEvent{
			Time: t0.Add(199 * time.Millisecond), Event: "task_exited", Kind: tracer.KindProcess,
			PID: 4121, TID: 4121, Comm: "calico-node",
			ExitCode: &code, Failures: 20, FailedSyscall: "clone", LastFailure: t0.Add(19 * time.Millisecond),
		},
		Who: calicoFailure(t0, 1).Who,
	})
	w.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "EAGAIN ×20") ||
		lines[1] != "14:02:11  calico-node[4121] (kube-system/calico-node-56bgm) exited (code 2) 180 ms after 20 failed clones" {
		t.Fatalf("got:\n%s", out.String())
	}
}

// The mode and hooks go to stderr: stdout carries only the node's events.
func TestTextAttachedGoesToDiag(t *testing.T) {
	var out, diag bytes.Buffer
	w := NewText(&out)
	w.Diag = &diag
	w.Attached(tracer.ModeTracepoint, []tracer.Attachment{{Program: "fw_tp_clone", Hook: "tracepoint/syscalls/sys_exit_clone", OnDemand: true}},
		tracer.HooksState{Policy: tracer.HooksPressure, Reason: "no limit within reach"})
	at := time.Date(2026, 3, 4, 14, 2, 11, 0, time.UTC)
	w.FailureHooks(at, tracer.HooksState{Armed: true, Policy: tracer.HooksPressure, Reason: "pids cgroup /kubepods at 49100 of 49152", WithinReach: at.Add(-4 * time.Millisecond)})
	w.Close()
	if out.Len() != 0 || diag.String() != "forkwatch: tracepoint mode, attached to tracepoint/syscalls/sys_exit_clone (on demand)\n"+
		"forkwatch: failure hooks not armed: no limit within reach\n"+
		"forkwatch: 14:02:11 failure hooks armed: pids cgroup /kubepods at 49100 of 49152 (attached 4ms after)\n" {
		t.Fatalf("stdout %q, stderr %q", out.String(), diag.String())
	}
}
