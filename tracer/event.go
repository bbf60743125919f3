package tracer

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cause is the limit that refused a fork, as decided in the kernel.
type Cause string

// The causes forkwatch tells apart. Each maps to one fail_cause in the BPF
// program; the strings are part of the JSON and metrics contract.
const (
	CausePidsCgroup  Cause = "pids_cgroup"
	CausePidMax      Cause = "pid_max"
	CauseRlimitNproc Cause = "rlimit_nproc"
	CauseThreadsMax  Cause = "threads_max"
	CauseNoMemory    Cause = "no_memory"
	CauseUnknown     Cause = "unknown"
	// CauseDenied is EPERM or EACCES: seccomp, an LSM or a missing
	// capability refused the fork. Not a limit, and not counted as a fork
	// failure: it has its own metric and no limit evidence.
	CauseDenied Cause = "denied"
)

var causeNames = map[forkwatchFailCause]Cause{
	forkwatchFailCauseCAUSE_UNKNOWN:      CauseUnknown,
	forkwatchFailCauseCAUSE_PIDS_CGROUP:  CausePidsCgroup,
	forkwatchFailCauseCAUSE_PID_MAX:      CausePidMax,
	forkwatchFailCauseCAUSE_RLIMIT_NPROC: CauseRlimitNproc,
	forkwatchFailCauseCAUSE_THREADS_MAX:  CauseThreadsMax,
	forkwatchFailCauseCAUSE_NO_MEMORY:    CauseNoMemory,
	forkwatchFailCauseCAUSE_DENIED:       CauseDenied,
}

var syscallNames = map[forkwatchForkSyscall]string{
	forkwatchForkSyscallSYSCALL_CLONE:  "clone",
	forkwatchForkSyscallSYSCALL_CLONE3: "clone3",
	forkwatchForkSyscallSYSCALL_FORK:   "fork",
	forkwatchForkSyscallSYSCALL_VFORK:  "vfork",
}

// Limit is the evidence for a cause: the limit at its edge and its use.
// Which identifying field is set depends on the cause: Cgroup for
// pids_cgroup, PIDNamespace for pid_max, UID for rlimit_nproc, none for
// threads_max.
type Limit struct {
	Cgroup       string  `json:"cgroup,omitempty"`
	PIDNamespace uint64  `json:"pid_namespace,omitempty"`
	UID          *uint32 `json:"uid,omitempty"`
	Current      int64   `json:"current"`
	Max          int64   `json:"max"`
}

// Failure is one failed fork/clone/vfork/clone3 call. Its JSON form is the
// documented `fork_failed` object.
type Failure struct {
	Time    time.Time `json:"time"`
	Event   string    `json:"event"`
	Syscall string    `json:"syscall"`
	Errno   string    `json:"errno"`
	Ret     int32     `json:"ret"`
	PID     uint32    `json:"pid"`
	TID     uint32    `json:"tid"`
	UID     uint32    `json:"uid"`
	Comm    string    `json:"comm"`
	Cgroup  string    `json:"cgroup"`
	Cause   Cause     `json:"cause"`
	Limit   *Limit    `json:"limit,omitempty"`
	// IntoCgroup is set when the fork was a clone3 with CLONE_INTO_CGROUP
	// refused by the pids limit of the cgroup the child was to join (fentry
	// mode sees it): Cgroup, the pod and the container are that cgroup's,
	// not the caller's.
	IntoCgroup bool `json:"into_cgroup,omitempty"`

	// CgroupID is the caller's cgroup id (its directory's inode number).
	CgroupID uint64 `json:"-"`
	// PathTruncated is set when the caller's cgroup was nested deeper or
	// longer than a record holds; Cgroup then lacks its last components.
	PathTruncated bool `json:"-"`
}

// Kind says whether a created or exited task is a thread or a process.
type Kind string

const (
	KindThread  Kind = "thread"
	KindProcess Kind = "process"
)

// TaskEvent is a task created or exited. The ring buffer carries them for a
// tailed pod (--pod), and the exits of processes whose forks failed.
type TaskEvent struct {
	Time      time.Time `json:"time"`
	Event     string    `json:"event"` // task_created, task_exited
	Kind      Kind      `json:"kind"`
	PID       uint32    `json:"pid"`
	TID       uint32    `json:"tid"`
	ParentPID uint32    `json:"parent_pid,omitempty"` // task_created
	UID       uint32    `json:"uid"`
	Comm      string    `json:"comm"`
	Cgroup    string    `json:"cgroup"`
	// task_exited: how it ended, as wait(2) tells a parent.
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	// task_exited of a process whose forks failed: how many, the syscall of
	// the last and when.
	Failures      uint32    `json:"failures,omitempty"`
	FailedSyscall string    `json:"failed_syscall,omitempty"`
	LastFailure   time.Time `json:"last_failure,omitzero"`

	CgroupID      uint64 `json:"-"`
	PathTruncated bool   `json:"-"`
}

// Record is one decoded ring-buffer record: a Failure or a TaskEvent.
type Record struct {
	IsFailure bool
	// IsPressure: a limit came within reach (HooksPressure); Failure holds
	// the task and the limit, with Event "pressure" and no syscall.
	IsPressure bool
	Failure    Failure
	Task       TaskEvent

	// The last cgroup path and command decoded: a storm repeats them
	// record after record, and reusing the string spares an allocation.
	path, comm string
}

// intern returns b as a string, *last if it holds the same bytes.
func intern(last *string, b []byte) string {
	if string(b) != *last { // compared without a copy
		*last = string(b)
	}
	return *last
}

// eventSize is the size of one failure record: the generated struct, defined
// once in bpf/forkwatch.h.
const eventSize = int(unsafe.Sizeof(forkwatchEvent{}))

// Clock converts the kernel's CLOCK_MONOTONIC timestamps to wall time.
type Clock struct{ offset time.Duration }

// NewClock measures the offset between CLOCK_MONOTONIC and the wall clock.
func NewClock() Clock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return Clock{offset: time.Duration(time.Now().UnixNano() - ts.Nano())}
}

// Wall returns the wall time of a CLOCK_MONOTONIC reading in nanoseconds.
func (c Clock) Wall(ktimeNs uint64) time.Time {
	return time.Unix(0, int64(ktimeNs)+int64(c.offset))
}

// Decode decodes one ring-buffer record into r. It does not resolve pods;
// see Attributor.
func Decode(raw []byte, clock Clock, r *Record) error {
	if len(raw) < eventSize {
		return fmt.Errorf("record of %d bytes, want %d", len(raw), eventSize)
	}
	// The record is the C struct event; the generated Go type has the same
	// layout (structs.HostLayout), so the bytes are copied over it as they
	// are: no reflection on the hot path.
	var ev forkwatchEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&ev)), eventSize), raw)
	e := &ev
	pathLen := int(e.CgroupPathLen)
	if pathLen > len(e.CgroupPath) {
		return fmt.Errorf("cgroup path length %d out of range", pathLen)
	}
	path := intern(&r.path, cBytes(unsafe.Slice((*byte)(unsafe.Pointer(&e.CgroupPath[0])), pathLen)))
	if path == "" || path[0] != '/' {
		return fmt.Errorf("cgroup path %q is not absolute", path)
	}
	switch forkwatchEventType(e.Type) {
	case forkwatchEventTypeEVENT_FORK_FAILED:
		r.IsFailure, r.IsPressure = true, false
		return decodeFailure(e, path, r.commOf(e), clock, &r.Failure)
	case forkwatchEventTypeEVENT_PRESSURE:
		r.IsFailure, r.IsPressure = false, true
		return decodeFailure(e, path, r.commOf(e), clock, &r.Failure)
	case forkwatchEventTypeEVENT_TASK_CREATED, forkwatchEventTypeEVENT_TASK_EXITED:
		r.IsFailure, r.IsPressure = false, false
		return decodeTask(e, path, r.commOf(e), clock, &r.Task)
	}
	return fmt.Errorf("unknown record type %d", e.Type)
}

// commOf returns the record's command name.
func (r *Record) commOf(e *forkwatchEvent) string {
	return intern(&r.comm, cBytes(unsafe.Slice((*byte)(unsafe.Pointer(&e.Comm[0])), len(e.Comm))))
}

func decodeTask(e *forkwatchEvent, path, comm string, clock Clock, t *TaskEvent) error {
	var kind Kind
	switch forkwatchTaskKind(e.Kind) {
	case forkwatchTaskKindKIND_THREAD:
		kind = KindThread
	case forkwatchTaskKindKIND_PROCESS:
		kind = KindProcess
	default:
		return fmt.Errorf("unknown task kind %d", e.Kind)
	}
	*t = TaskEvent{
		Time:          clock.Wall(e.KtimeNs),
		Event:         "task_created",
		Kind:          kind,
		PID:           e.Pid,
		TID:           e.Tid,
		UID:           e.Uid,
		Comm:          comm,
		Cgroup:        path,
		CgroupID:      e.CgroupId,
		PathTruncated: e.Flags&uint8(forkwatchEventFlagsEVENT_PATH_TRUNCATED) != 0,
	}
	if forkwatchEventType(e.Type) == forkwatchEventTypeEVENT_TASK_CREATED {
		t.ParentPID = e.ParentPid
		return nil
	}
	t.Event = "task_exited"
	status := syscall.WaitStatus(e.Ret)
	if status.Signaled() {
		t.Signal = unix.SignalName(status.Signal())
	} else {
		code := status.ExitStatus()
		t.ExitCode = &code
	}
	if e.Failures > 0 {
		t.Failures = e.Failures
		t.FailedSyscall = syscallNames[forkwatchForkSyscall(e.Syscall)]
		t.LastFailure = clock.Wall(e.LastFailureNs)
	}
	return nil
}

func decodeFailure(e *forkwatchEvent, path, comm string, clock Clock, f *Failure) error {
	cause, ok := causeNames[forkwatchFailCause(e.Cause)]
	if !ok {
		return fmt.Errorf("unknown cause %d", e.Cause)
	}
	event, name := "pressure", ""
	if forkwatchEventType(e.Type) == forkwatchEventTypeEVENT_FORK_FAILED {
		event, ok = "fork_failed", false
		if name, ok = syscallNames[forkwatchForkSyscall(e.Syscall)]; !ok {
			return fmt.Errorf("unknown syscall %d", e.Syscall)
		}
	}
	*f = Failure{
		Time:          clock.Wall(e.KtimeNs),
		Event:         event,
		Syscall:       name,
		Errno:         errnoName(e.Ret),
		Ret:           e.Ret,
		PID:           e.Pid,
		TID:           e.Tid,
		UID:           e.Uid,
		Comm:          comm,
		Cgroup:        path,
		CgroupID:      e.CgroupId,
		PathTruncated: e.Flags&uint8(forkwatchEventFlagsEVENT_PATH_TRUNCATED) != 0,
		IntoCgroup:    e.Flags&uint8(forkwatchEventFlagsEVENT_TARGET_CGROUP) != 0,
		Cause:         cause,
	}
	switch cause {
	case CausePidsCgroup:
		f.Limit = &Limit{Cgroup: pathPrefix(path, int(e.LimitLevel)), Current: e.LimitCurrent, Max: e.LimitMax}
	case CausePidMax:
		f.Limit = &Limit{PIDNamespace: e.LimitId, Current: e.LimitCurrent, Max: e.LimitMax}
	case CauseRlimitNproc:
		uid := uint32(e.LimitId)
		f.Limit = &Limit{UID: &uid, Current: e.LimitCurrent, Max: e.LimitMax}
	case CauseThreadsMax:
		f.Limit = &Limit{Current: e.LimitCurrent, Max: e.LimitMax}
	}
	return nil
}

// pathPrefix returns the first level components of a cgroup path: the path
// of the ancestor at that depth ("/" for 0).
func pathPrefix(path string, level int) string {
	if level <= 0 {
		return "/"
	}
	i := 0
	for n := 0; n < level; n++ {
		next := strings.IndexByte(path[i+1:], '/')
		if next < 0 {
			return path
		}
		i += 1 + next
	}
	return path[:i]
}

// cBytes returns b up to its first NUL.
func cBytes(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return b
}

// errnoName turns a negative syscall return into its errno's name.
func errnoName(ret int32) string {
	if ret >= 0 {
		return ""
	}
	if name := unix.ErrnoName(syscall.Errno(-ret)); name != "" {
		return name
	}
	return fmt.Sprintf("errno %d", -ret)
}
