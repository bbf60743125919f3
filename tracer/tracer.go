// Package tracer loads forkwatch's BPF programs, attaches them, and reads what
// they report: failing forks (from the ring buffer), per-cgroup task
// creation/exit counts and lost-event counts (from maps).
package tracer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// Mode names how forkwatch attaches to the kernel.
type Mode string

const (
	// ModeAuto picks the best mode the running kernel accepts.
	ModeAuto Mode = "auto"
	// ModeTracepoint uses the syscall-exit tracepoints and raw scheduler
	// tracepoints, classifying failures in the kernel at syscall exit.
	ModeTracepoint Mode = "tracepoint"
)

// Modes lists the modes --mode accepts, best first.
var Modes = []Mode{ModeAuto, ModeTracepoint}

// DefaultRingBufferSize holds ~10k failure records: at 50k failures/s, 200 ms
// of a reader that fell behind.
const DefaultRingBufferSize = 8 << 20

// Options configure a Tracer.
type Options struct {
	Mode Mode
	// RingBufferSize in bytes: a power of two, a multiple of the page size.
	RingBufferSize int
	// Tail enables streaming the creations and exits of tailed cgroups
	// (see Tail). Off, the kernel side does not even look.
	Tail bool
}

// Attachment is one program attached to one kernel hook.
type Attachment struct {
	Program string
	Hook    string
}

// Tracer owns the loaded BPF objects, their links and the ring-buffer reader.
type Tracer struct {
	objs     forkwatchObjects
	links    []link.Link
	reader   *ringbuf.Reader
	mode     Mode
	attached []Attachment

	stopOnce  sync.Once
	closeOnce sync.Once
	closeErr  error
}

// ErrUnsupported is wrapped by errors about kernels that cannot run forkwatch
// in the requested mode.
var ErrUnsupported = errors.New("kernel does not support it")

// New loads and attaches forkwatch's programs. On any failure, everything
// already loaded or attached is released before it returns.
func New(opts Options) (t *Tracer, err error) {
	if opts.Mode == "" {
		opts.Mode = ModeAuto
	}
	if opts.RingBufferSize == 0 {
		opts.RingBufferSize = DefaultRingBufferSize
	}
	if opts.Mode != ModeAuto && opts.Mode != ModeTracepoint {
		return nil, fmt.Errorf("mode %q: %w", opts.Mode, ErrUnsupported)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit: %w", err)
	}

	spec, err := loadForkwatch()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded BPF object: %w", err)
	}
	spec.Maps[forkwatchMapEvents].MaxEntries = uint32(opts.RingBufferSize)
	if err := spec.Variables[forkwatchVarTailEnabled].Set(opts.Tail); err != nil {
		return nil, fmt.Errorf("configuring the tail: %w", err)
	}

	t = &Tracer{mode: ModeTracepoint}
	defer func() {
		if err != nil {
			t.Close()
			t = nil
		}
	}()
	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) && os.Getenv("FORKWATCH_VERIFIER_LOG") != "" {
			fmt.Fprintf(os.Stderr, "%+v\n", verr)
		}
		return nil, fmt.Errorf("loading BPF programs: %w", err)
	}
	if err := t.refreshNodeLimits(); err != nil {
		return nil, err
	}
	if err := t.attachTracepoints(); err != nil {
		return nil, err
	}
	t.reader, err = ringbuf.NewReader(t.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("opening the ring buffer: %w", err)
	}
	return t, nil
}

func (t *Tracer) attachTracepoints() error {
	for _, tp := range []struct {
		group, name string
		prog        *ebpf.Program
		progName    string
	}{
		{"syscalls", "sys_exit_clone", t.objs.TpExitClone, forkwatchProgTpExitClone},
		{"syscalls", "sys_exit_clone3", t.objs.TpExitClone3, forkwatchProgTpExitClone3},
		{"syscalls", "sys_exit_fork", t.objs.TpExitFork, forkwatchProgTpExitFork},
		{"syscalls", "sys_exit_vfork", t.objs.TpExitVfork, forkwatchProgTpExitVfork},
	} {
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog, nil)
		if errors.Is(err, os.ErrNotExist) && tp.name == "sys_exit_clone3" {
			continue // clone3 arrived in 5.3; older kernels have no such syscall to fail
		}
		if err != nil {
			return fmt.Errorf("attaching tracepoint %s/%s: %w", tp.group, tp.name, err)
		}
		t.links = append(t.links, l)
		t.attached = append(t.attached, Attachment{Program: tp.progName, Hook: "tracepoint/" + tp.group + "/" + tp.name})
	}
	for _, rtp := range []struct {
		name     string
		prog     *ebpf.Program
		progName string
	}{
		{"sched_process_fork", t.objs.RawTpFork, forkwatchProgRawTpFork},
		{"sched_process_exit", t.objs.RawTpExit, forkwatchProgRawTpExit},
	} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: rtp.name, Program: rtp.prog})
		if err != nil {
			return fmt.Errorf("attaching raw tracepoint %s: %w", rtp.name, err)
		}
		t.links = append(t.links, l)
		t.attached = append(t.attached, Attachment{Program: rtp.progName, Hook: "raw_tp/" + rtp.name})
	}
	return nil
}

// Mode is the mode the tracer runs in.
func (t *Tracer) Mode() Mode { return t.mode }

// Attached lists each program and the hook it is attached to.
func (t *Tracer) Attached() []Attachment { return t.attached }

// StopReading makes a blocked ReadRecord return ringbuf.ErrClosed; the
// programs stay attached and the counters readable until Close.
func (t *Tracer) StopReading() {
	t.stopOnce.Do(func() {
		if t.reader != nil {
			t.reader.Close()
		}
	})
}

// Close detaches and unloads everything. It is safe to call more than once.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		t.StopReading()
		var errs []error
		for _, l := range t.links {
			errs = append(errs, l.Close())
		}
		errs = append(errs, t.objs.Close())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// ReadRecord blocks until the next ring-buffer record and stores it in rec,
// reusing its buffer. It returns ringbuf.ErrClosed once the tracer is closed.
func (t *Tracer) ReadRecord(rec *ringbuf.Record) error {
	return t.reader.ReadInto(rec)
}

// Tail makes the kernel stream creations and exits in the cgroup with this
// id and every cgroup below it (Options.Tail must be set).
func (t *Tracer) Tail(cgroupID uint64) error {
	if err := t.objs.TailedCgroups.Put(cgroupID, uint8(1)); err != nil {
		return fmt.Errorf("tailing cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Untail stops streaming the cgroup with this id.
func (t *Tracer) Untail(cgroupID uint64) error {
	if err := t.objs.TailedCgroups.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untailing cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// EventsLost is the number of failure records the kernel could not put in
// the ring buffer because it was full, since load.
func (t *Tracer) EventsLost() (uint64, error) {
	var perCPU []uint64
	if err := t.objs.EventsLost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading lost-event counters: %w", err)
	}
	var sum uint64
	for _, n := range perCPU {
		sum += n
	}
	return sum, nil
}

// TaskCounts are successful task creations and exits in one cgroup.
type TaskCounts struct {
	ThreadsCreated, ProcessesCreated uint64
	ThreadsExited, ProcessesExited   uint64
}

// TaskCounts returns the counts of every cgroup the kernel has seen a task
// created or exit in, by cgroup id.
func (t *Tracer) TaskCounts() (map[uint64]TaskCounts, error) {
	out := make(map[uint64]TaskCounts)
	var (
		key    uint64
		perCPU []forkwatchTaskCounts
	)
	it := t.objs.CountsByCgroup.Iterate()
	for it.Next(&key, &perCPU) {
		var c TaskCounts
		for _, p := range perCPU {
			c.ThreadsCreated += p.ThreadsCreated
			c.ProcessesCreated += p.ProcessesCreated
			c.ThreadsExited += p.ThreadsExited
			c.ProcessesExited += p.ProcessesExited
		}
		out[key] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading task counters: %w", err)
	}
	return out, nil
}

// RefreshNodeLimits hands kernel.pid_max and kernel.threads-max to the BPF
// side, which cannot read them on every kernel. Call it periodically: both
// are sysctls an operator may change during an incident.
func (t *Tracer) RefreshNodeLimits() error { return t.refreshNodeLimits() }

func (t *Tracer) refreshNodeLimits() error {
	pidMax, err := readSysctlInt("/proc/sys/kernel/pid_max")
	if err != nil {
		return err
	}
	threadsMax, err := readSysctlInt("/proc/sys/kernel/threads-max")
	if err != nil {
		return err
	}
	v := forkwatchNodeLimits{PidMax: pidMax, ThreadsMax: threadsMax}
	if err := t.objs.NodeLimitsNow.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("updating node limits: %w", err)
	}
	return nil
}

func readSysctlInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}
