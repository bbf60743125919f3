package tracer

import (
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// record builds a ring-buffer record the way the BPF program writes it.
func record(e forkwatchEvent, path string) []byte {
	if e.Type == 0 {
		e.Type = uint8(forkwatchEventTypeEVENT_FORK_FAILED)
	}
	for i := range len(path) {
		e.CgroupPath[i] = int8(path[i])
	}
	e.CgroupPathLen = uint16(len(path))
	b := make([]byte, eventSize)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&e)), eventSize))
	return b
}

func comm(s string) (c [16]int8) {
	for i := range len(s) {
		c[i] = int8(s[i])
	}
	return c
}

func TestDecodeFailure(t *testing.T) {
	clock := Clock{offset: time.Duration(1_700_000_000) * time.Second}
	uid := uint32(1000)
	base := forkwatchEvent{
		KtimeNs: 5_000_000_123, Pid: 4121, Tid: 4130, Ret: -11, Uid: 1000,
		Syscall: uint8(forkwatchForkSyscallSYSCALL_CLONE), Comm: comm("calico-node"),
	}
	ctr := "/kubepods/burstable/pod1c7b6a9e-8d0f-4b4e-9a55-2f2f3b4f7d10/0a1b2c3d4e5f"
	want := func(cause Cause, l *Limit) Failure {
		return Failure{
			Time: time.Unix(1_700_000_005, 123), Event: "fork_failed", Syscall: "clone",
			Errno: "EAGAIN", Ret: -11, PID: 4121, TID: 4130, UID: 1000, Comm: "calico-node",
			Cgroup: ctr, CgroupID: 77, Cause: cause, Limit: l,
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*forkwatchEvent)
		path string
		want Failure
	}{
		{
			name: "ancestor pids cgroup",
			edit: func(e *forkwatchEvent) {
				e.Cause = uint8(forkwatchFailCauseCAUSE_PIDS_CGROUP)
				e.LimitLevel, e.LimitCurrent, e.LimitMax, e.LimitId = 1, 49152, 49152, 12
			},
			path: ctr,
			want: want(CausePidsCgroup, &Limit{Cgroup: "/kubepods", Current: 49152, Max: 49152}),
		},
		{
			name: "own pids cgroup",
			edit: func(e *forkwatchEvent) {
				e.Cause = uint8(forkwatchFailCauseCAUSE_PIDS_CGROUP)
				e.LimitLevel, e.LimitCurrent, e.LimitMax = 4, 10, 10
			},
			path: ctr,
			want: want(CausePidsCgroup, &Limit{Cgroup: ctr, Current: 10, Max: 10}),
		},
		{
			name: "pid_max",
			edit: func(e *forkwatchEvent) {
				e.Cause = uint8(forkwatchFailCauseCAUSE_PID_MAX)
				e.LimitId, e.LimitCurrent, e.LimitMax = 4026531836, 32767, 32768
			},
			path: ctr,
			want: want(CausePidMax, &Limit{PIDNamespace: 4026531836, Current: 32767, Max: 32768}),
		},
		{
			name: "rlimit_nproc",
			edit: func(e *forkwatchEvent) {
				e.Cause = uint8(forkwatchFailCauseCAUSE_RLIMIT_NPROC)
				e.LimitId, e.LimitCurrent, e.LimitMax = 1000, 4096, 4096
			},
			path: ctr,
			want: want(CauseRlimitNproc, &Limit{UID: &uid, Current: 4096, Max: 4096}),
		},
		{
			name: "threads_max",
			edit: func(e *forkwatchEvent) {
				e.Cause = uint8(forkwatchFailCauseCAUSE_THREADS_MAX)
				e.LimitCurrent, e.LimitMax = 192730, 192730
			},
			path: ctr,
			want: want(CauseThreadsMax, &Limit{Current: 192730, Max: 192730}),
		},
		{
			name: "unknown has no limit",
			edit: func(e *forkwatchEvent) {},
			path: ctr,
			want: want(CauseUnknown, nil),
		},
		{
			name: "denied by policy has no limit",
			edit: func(e *forkwatchEvent) {
				e.Ret = -1
				e.Cause = uint8(forkwatchFailCauseCAUSE_DENIED)
			},
			path: ctr,
			want: func() Failure {
				f := want(CauseDenied, nil)
				f.Errno, f.Ret = "EPERM", -1
				return f
			}(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := base
			e.CgroupId = 77
			tc.edit(&e)
			var r Record
			if err := Decode(record(e, tc.path), clock, &r); err != nil {
				t.Fatal(err)
			}
			if got := r.Failure; !r.IsFailure || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeFailureErrnoAndFlags(t *testing.T) {
	e := forkwatchEvent{Ret: -12, Syscall: uint8(forkwatchForkSyscallSYSCALL_VFORK), Cause: uint8(forkwatchFailCauseCAUSE_NO_MEMORY),
		Flags: uint8(forkwatchEventFlagsEVENT_PATH_TRUNCATED)}
	var r Record
	if err := Decode(record(e, "/a/b"), Clock{}, &r); err != nil {
		t.Fatal(err)
	}
	if f := r.Failure; f.Errno != "ENOMEM" || f.Syscall != "vfork" || f.Cause != CauseNoMemory || f.Limit != nil || !f.PathTruncated {
		t.Fatalf("got %+v", f)
	}
}

func TestDecodeFailureRejectsGarbage(t *testing.T) {
	good := record(forkwatchEvent{Ret: -11, Syscall: 1}, "/x")
	for name, raw := range map[string][]byte{
		"short": good[:eventSize-1],
		"empty": nil,
		"bad type": func() []byte {
			b := record(forkwatchEvent{Syscall: 1}, "/x")
			b[unsafe.Offsetof(forkwatchEvent{}.Type)] = 9
			return b
		}(),
		"bad cause":   record(forkwatchEvent{Syscall: 1, Cause: 42}, "/x"),
		"bad syscall": record(forkwatchEvent{Syscall: 7}, "/x"),
		"relative":    record(forkwatchEvent{Syscall: 1}, "x"),
		"path too long": func() []byte {
			b := record(forkwatchEvent{Syscall: 1}, "/x")
			off := unsafe.Offsetof(forkwatchEvent{}.CgroupPathLen)
			b[off], b[off+1] = 0xff, 0xff
			return b
		}(),
	} {
		var r Record
		if err := Decode(raw, Clock{}, &r); err == nil {
			t.Errorf("%s: decoded %+v, want an error", name, r)
		}
	}
}

func TestDecodeTaskEvents(t *testing.T) {
	clock := Clock{}
	created := forkwatchEvent{Type: uint8(forkwatchEventTypeEVENT_TASK_CREATED), Kind: uint8(forkwatchTaskKindKIND_THREAD),
		KtimeNs: 10, Pid: 50, Tid: 51, ParentPid: 50, Comm: comm("java")}
	var r Record
	if err := Decode(record(created, "/kubepods/pod1"), clock, &r); err != nil {
		t.Fatal(err)
	}
	want := TaskEvent{Time: time.Unix(0, 10), Event: "task_created", Kind: KindThread, PID: 50, TID: 51, ParentPID: 50, Comm: "java", Cgroup: "/kubepods/pod1"}
	if r.IsFailure || !reflect.DeepEqual(r.Task, want) {
		t.Fatalf("got  %+v\nwant %+v", r.Task, want)
	}

	// calico-node exiting with code 2 after 20 failed clones.
	exited := forkwatchEvent{Type: uint8(forkwatchEventTypeEVENT_TASK_EXITED), Kind: uint8(forkwatchTaskKindKIND_PROCESS),
		KtimeNs: 2_000_000_000, Pid: 4121, Tid: 4121, Ret: 2 << 8, Failures: 20, LastFailureNs: 1_820_000_000,
		Syscall: uint8(forkwatchForkSyscallSYSCALL_CLONE), Comm: comm("calico-node")}
	if err := Decode(record(exited, "/kubepods/pod1/c"), clock, &r); err != nil {
		t.Fatal(err)
	}
	if ev := r.Task; ev.Event != "task_exited" || ev.ExitCode == nil || *ev.ExitCode != 2 || ev.Signal != "" ||
		ev.Failures != 20 || ev.FailedSyscall != "clone" || ev.Time.Sub(ev.LastFailure) != 180*time.Millisecond {
		t.Fatalf("got %+v", ev)
	}

	killed := exited
	killed.Ret = 9 // SIGKILL
	if err := Decode(record(killed, "/"), clock, &r); err != nil {
		t.Fatal(err)
	}
	if r.Task.Signal != "SIGKILL" || r.Task.ExitCode != nil {
		t.Fatalf("got %+v", r.Task)
	}

	bad := created
	bad.Kind = 7
	if err := Decode(record(bad, "/"), clock, &r); err == nil {
		t.Fatal("decoded an unknown task kind")
	}
}

func TestPathPrefix(t *testing.T) {
	for _, tc := range []struct {
		path  string
		level int
		want  string
	}{
		{"/kubepods/burstable/pod1/ctr", 0, "/"},
		{"/kubepods/burstable/pod1/ctr", 1, "/kubepods"},
		{"/kubepods/burstable/pod1/ctr", 2, "/kubepods/burstable"},
		{"/kubepods/burstable/pod1/ctr", 4, "/kubepods/burstable/pod1/ctr"},
		{"/kubepods/burstable/pod1/ctr", 9, "/kubepods/burstable/pod1/ctr"},
		{"/", 1, "/"},
	} {
		if got := pathPrefix(tc.path, tc.level); got != tc.want {
			t.Errorf("pathPrefix(%q, %d) = %q, want %q", tc.path, tc.level, got, tc.want)
		}
	}
}

// FuzzDecodeFailure feeds the decoder arbitrary records (every record type,
// seeds in testdata/fuzz): it must never panic, and what it accepts must be
// well-formed.
func FuzzDecodeFailure(f *testing.F) {
	f.Add(record(forkwatchEvent{Ret: -11, Syscall: 1, Cause: 1, LimitLevel: 2}, "/kubepods/burstable/pod1"))
	f.Add(record(forkwatchEvent{Ret: -12, Syscall: 4, Cause: 5}, "/"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var r Record
		if err := Decode(raw, Clock{}, &r); err != nil {
			return
		}
		cgroup := r.Task.Cgroup
		if r.IsFailure {
			cgroup = r.Failure.Cgroup
			if l := r.Failure.Limit; l != nil && r.Failure.Cause == CausePidsCgroup && !strings.HasPrefix(cgroup, l.Cgroup) {
				t.Fatalf("limit cgroup %q is not an ancestor of %q", l.Cgroup, cgroup)
			}
		} else if r.Task.Kind != KindThread && r.Task.Kind != KindProcess {
			t.Fatalf("task kind %q", r.Task.Kind)
		}
		if cgroup == "" || cgroup[0] != '/' {
			t.Fatalf("decoded a relative cgroup path %q", cgroup)
		}
	})
}
