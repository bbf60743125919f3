// Package tracer loads forkwatch's BPF programs, attaches them in the best
// mode the kernel supports, and reads what they report: failing forks (from
// the ring buffer or a perf event array), per-cgroup task creation/exit
// counts and lost-event counts (from maps).
package tracer

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// Mode names how forkwatch attaches to the kernel (see modes.go).
type Mode string

const (
	// ModeAuto picks, for each job, the best mode the running kernel
	// accepts: fentry, else tracepoint, else kprobe.
	ModeAuto Mode = "auto"
	// ModeFentry uses fexit programs on copy_process() and pids_can_fork()
	// (BPF trampolines: 5.5+ with BTF).
	ModeFentry Mode = "fentry"
	// ModeTracepoint uses the syscall-exit tracepoints and raw scheduler
	// tracepoints, classifying failures in the kernel at syscall exit.
	ModeTracepoint Mode = "tracepoint"
	// ModeKprobe uses kprobes, kretprobes and classic tracepoints, and a
	// perf event array where there is no ring buffer: what CentOS/RHEL 7
	// (3.10.0-940+) loads.
	ModeKprobe Mode = "kprobe"
)

// Modes lists the modes --mode accepts, best first.
var Modes = []Mode{ModeAuto, ModeFentry, ModeTracepoint, ModeKprobe}

// DefaultRingBufferSize holds ~6k failure records: at 50k failures/s, 120 ms
// of a reader that fell behind. make bench: no record lost at 100k
// failures/s on two cores. Its pages are all resident and mapped twice
// into forkwatch (8 MiB of its RSS); --ring-buffer-size raises it.
const DefaultRingBufferSize = 4 << 20

// Options configure a Tracer.
type Options struct {
	Mode Mode
	// RingBufferSize in bytes: a power of two, a multiple of the page size.
	// With a perf event array, the size of all CPUs' buffers together.
	RingBufferSize int
	// Tail enables streaming the creations and exits of tailed cgroups
	// (see Tail). Off, the kernel side does not even look.
	Tail bool
	// BTF is a file with the running kernel's BTF, for kernels without
	// /sys/kernel/btf/vmlinux (CentOS 7: from BTFHub). Empty: the kernel's.
	BTF string
	// PerfBuffer hands records over through a perf event array even where
	// the kernel has a BPF ring buffer (which arrived in 5.8).
	PerfBuffer bool
	// PidsRoot is the mount of the cgroup hierarchy holding the pids
	// controller, and PidsV2 whether it is cgroup v2: where the pids
	// controller's refusal counts are read at start (seedRefusalCounts).
	PidsRoot string
	PidsV2   bool
	// PidMax and ThreadsMax are kernel.pid_max and kernel.threads-max now
	// (see SetNodeLimits).
	PidMax, ThreadsMax int64
	// FailureHooks: HooksAlways (the default) or HooksPressure.
	FailureHooks FailureHooks
}

// Attachment is one program attached to one kernel hook.
type Attachment struct {
	Program string
	Hook    string
	// Mode is the mode whose plan the program belongs to: in fentry mode the
	// task counters still run on raw tracepoints.
	Mode Mode
	// Fallback says why better hooks for the program's job were not used,
	// e.g. "fentry: fexit/copy_process: load program: operation not
	// permitted"; empty when the best one was.
	Fallback string
	// OnDemand is set for a failure hook attached only while armed
	// (HooksPressure): see FailureHooks.
	OnDemand bool
}

// Tracer owns the loaded BPF objects, their links and the record reader.
type Tracer struct {
	maps     forkwatchMaps
	dataMaps []*ebpf.Map // global variables (.rodata), when a program uses them
	progs    []*ebpf.Program
	// attachedProgs are the programs attached, by name, for their
	// statistics.
	attachedProgs []namedProg
	links         []link.Link
	forkRets      []link.Link // kretprobes on the fork path: their missed calls may hide failures
	ring          *ringbuf.Reader
	perf          *perf.Reader
	perfRec       perf.Record
	mode          Mode
	attached      []Attachment
	fallbacks     []Fallback

	noMissedInfo atomic.Bool

	// lastPlan is what tryPlan attached last; pressure arms the failure
	// hooks by pressure.
	lastPlan []onDemand
	pressure pressure
	// refusalFile is the pids file holding the kernel's refusal count
	// ("" where it keeps none); refusalInLimit whether it counts in the
	// refusing cgroup rather than the forking one.
	refusalFile    string
	refusalInLimit bool

	counts countReader

	stopOnce  sync.Once
	closeOnce sync.Once
	closeErr  error
}

// ErrUnsupported is wrapped by errors about kernels that cannot run forkwatch
// in the requested mode.
var ErrUnsupported = errors.New("kernel does not support it")

// New loads and attaches forkwatch's programs. On any failure, everything
// already loaded or attached is released before it returns. Errors about
// the kernel wrap ErrUnsupported (an *UnsupportedError) or are a *BTFError.
func New(opts Options) (t *Tracer, err error) {
	if opts.Mode == "" {
		opts.Mode = ModeAuto
	}
	if opts.RingBufferSize == 0 {
		opts.RingBufferSize = DefaultRingBufferSize
	}
	if !slices.Contains(Modes, opts.Mode) {
		return nil, fmt.Errorf("mode %q: %w", opts.Mode, ErrUnsupported)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit: %w", err)
	}
	cache := btf.NewCache()
	types, err := kernelTypes(opts.BTF, cache)
	if err != nil {
		return nil, err
	}

	spec, err := loadForkwatch()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded BPF object: %w", err)
	}
	var specs forkwatchSpecs
	if err := spec.Assign(&specs); err != nil {
		return nil, fmt.Errorf("reading the embedded BPF object: %w", err)
	}
	rh7 := legacyCgroups(types, cache)
	// 3.10 has no ring buffer; its programs are built for the perf array.
	usePerf := opts.PerfBuffer || rh7 || features.HaveMapType(ebpf.RingBuf) != nil
	if usePerf {
		specs.Events.Type = ebpf.PerfEventArray
		specs.Events.KeySize, specs.Events.ValueSize = 4, 4
		specs.Events.MaxEntries = 0 // one per possible CPU
	} else {
		specs.Events.MaxEntries = uint32(opts.RingBufferSize)
	}
	// LRU maps arrived in 4.10: without them a full map takes no new keys.
	for _, ms := range []*ebpf.MapSpec{specs.CountsByCgroup, specs.FailedProcs, specs.PidsRefusals, specs.PidsRefusalsClaimed} {
		switch {
		case ms.Type == ebpf.LRUHash && features.HaveMapType(ebpf.LRUHash) != nil:
			ms.Type = ebpf.Hash
		case ms.Type == ebpf.LRUCPUHash && features.HaveMapType(ebpf.LRUCPUHash) != nil:
			ms.Type = ebpf.PerCPUHash
		}
	}
	if err := specs.TailEnabled.Set(opts.Tail); err != nil {
		return nil, fmt.Errorf("configuring the tail: %w", err)
	}
	if err := specs.PidsHierarchy.Set(pidsHierarchy("/proc/cgroups")); err != nil {
		return nil, fmt.Errorf("configuring the counters: %w", err)
	}
	kernel := types
	if kernel == nil {
		kernel, _ = cache.Kernel()
	}
	eventsKind, eventsFile := pidsEventsKind(kernel, opts.PidsV2, opts.PidsRoot)
	if err := specs.PidsEvents.Set(eventsKind); err != nil {
		return nil, fmt.Errorf("configuring the refusal counts: %w", err)
	}
	if err := specs.PerfOutput.Set(usePerf); err != nil {
		return nil, fmt.Errorf("configuring the output: %w", err)
	}
	todo, err := jobs(opts.Mode, usePerf, rh7)
	if err != nil {
		return nil, err
	}

	tr := &Tracer{}
	defer func() {
		if err != nil {
			tr.Close()
			t = nil
		}
	}()
	t = tr
	l := &loader{spec: spec, opts: ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: types}, Cache: cache}, tracer: t}
	if err := l.loadMaps(); err != nil {
		return nil, err
	}
	if eventsKind != pidsEventsNone {
		t.refusalFile, t.refusalInLimit = eventsFile, eventsKind == pidsEventsLimit
	}
	if err := t.SetNodeLimits(opts.PidMax, opts.ThreadsMax); err != nil {
		return nil, err
	}
	if eventsKind != pidsEventsNone && opts.PidsRoot != "" {
		if err := seedRefusalCounts(t.maps.PidsRefusalsClaimed, opts.PidsRoot, eventsFile); err != nil {
			return nil, err
		}
	}
	cfg := forkwatchConfig{}
	if opts.Tail {
		cfg.TailEnabled = 1
	}
	if err := t.maps.ConfigNow.Put(uint32(0), &cfg); err != nil {
		return nil, fmt.Errorf("configuring the kprobe programs: %w", err)
	}
	var (
		failLinks []link.Link
		failHooks []onDemand
	)
	for _, j := range todo {
		first := len(t.links)
		mode, err := t.attachJob(l, j)
		if err != nil {
			var unsupported *UnsupportedError
			if errors.As(err, &unsupported) {
				unsupported.Mode = opts.Mode
			}
			return nil, err
		}
		if j.what == jobFailures {
			t.mode = mode
			t.pressure.state = HooksState{Armed: true, Policy: HooksAlways, Reason: "attached for the whole run"}
			if mode != ModeTracepoint {
				t.pressure.state.Reason += ": in " + string(mode) + " mode they hook only the fork path"
			}
			failLinks, failHooks = slices.Clone(t.links[first:]), slices.Clone(t.lastPlan)
		}
	}
	if t.mode == ModeTracepoint && opts.FailureHooks == HooksPressure {
		t.setupPressure(l, failLinks, failHooks)
	}
	t.attachSysctlWatch(l)

	if usePerf {
		perCPU := max(opts.RingBufferSize/int(t.maps.Events.MaxEntries()), os.Getpagesize())
		t.perf, err = perf.NewReader(t.maps.Events, perCPU)
		if err != nil {
			return nil, fmt.Errorf("opening the perf buffer: %w", err)
		}
	} else {
		t.ring, err = ringbuf.NewReader(t.maps.Events)
		if err != nil {
			return nil, fmt.Errorf("opening the ring buffer: %w", err)
		}
	}
	return t, nil
}

// attachJob attaches the first of the job's plans the kernel accepts and
// returns its mode ("" for an optional job no plan of which works).
func (t *Tracer) attachJob(l *loader, j job) (Mode, error) {
	var refused []Fallback
	for _, p := range j.plans {
		attached, err := t.tryPlan(l, p, j.what)
		if err == nil {
			reasons := make([]string, len(refused))
			for i, f := range refused {
				reasons[i] = string(f.Mode) + ": " + f.Reason
			}
			for i := range attached {
				attached[i].Fallback = strings.Join(reasons, "; ")
			}
			t.attached = append(t.attached, attached...)
			t.fallbacks = append(t.fallbacks, refused...)
			return p.mode, nil
		}
		refused = append(refused, Fallback{Mode: p.mode, Job: j.what, Reason: err.Error()})
	}
	t.fallbacks = append(t.fallbacks, refused...)
	if j.required {
		return "", &UnsupportedError{Refused: refused}
	}
	return "", nil
}

// tryPlan loads and attaches every program of p, or none.
func (t *Tracer) tryPlan(l *loader, p plan, job string) (_ []Attachment, err error) {
	var (
		progs           []*ebpf.Program
		links, forkRets []link.Link
		attached        []Attachment
		named           []namedProg
	)
	defer func() {
		if err != nil {
			for _, lk := range links {
				lk.Close()
			}
			for _, prog := range progs {
				prog.Close()
			}
		}
	}()
	for _, h := range p.hooks {
		prog, err := l.program(h.prog)
		if err != nil {
			return nil, fmt.Errorf("%s: %s", h.describe(strings.Join(h.at, "|")), short(err))
		}
		progs = append(progs, prog)
		lk, where, err := attach(h, prog)
		if err != nil && h.optional && errors.Is(err, os.ErrNotExist) {
			continue // clone3 arrived in 5.3: older kernels have no such syscall to fail
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s", where, short(err))
		}
		links = append(links, lk)
		if h.maxActive {
			forkRets = append(forkRets, lk)
		}
		attached = append(attached, Attachment{Program: h.prog, Hook: where, Mode: p.mode})
		named = append(named, namedProg{h.prog, job, prog})
	}
	t.lastPlan = t.lastPlan[:0]
	for i, a := range attached {
		for _, h := range p.hooks {
			if h.prog == a.Program {
				t.lastPlan = append(t.lastPlan, onDemand{h: h, prog: named[i].prog})
			}
		}
	}
	t.progs = append(t.progs, progs...)
	t.attachedProgs = append(t.attachedProgs, named...)
	t.links = append(t.links, links...)
	t.forkRets = append(t.forkRets, forkRets...)
	return attached, nil
}

// loader loads the programs one at a time, all sharing one set of maps, so
// that a program the kernel refuses leaves the others loadable.
type loader struct {
	spec   *ebpf.CollectionSpec
	opts   ebpf.CollectionOptions
	tracer *Tracer
	byName map[string]*ebpf.Map
	vars   map[string]*ebpf.Variable // the writable globals (.bss, .data), memory-mapped (5.5+)
}

// loadMaps creates every map but the global variables' (created with the
// first program using them: kernels before 5.2 have none).
func (l *loader) loadMaps() error {
	ms := &ebpf.CollectionSpec{Maps: map[string]*ebpf.MapSpec{}, Types: l.spec.Types, ByteOrder: l.spec.ByteOrder}
	for name, m := range l.spec.Maps {
		if !strings.HasPrefix(name, ".") {
			ms.Maps[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(ms, l.opts)
	if err != nil {
		return fmt.Errorf("creating BPF maps: %w", err)
	}
	l.byName = maps.Clone(coll.Maps)
	if err := coll.Assign(&l.tracer.maps); err != nil {
		coll.Close()
		return fmt.Errorf("creating BPF maps: %w", err)
	}
	return nil
}

// mapNamed returns the map of that name, creating a global-variable section
// on first use.
func (l *loader) mapNamed(name string) (*ebpf.Map, error) {
	if m, ok := l.byName[name]; ok {
		return m, nil
	}
	if _, ok := l.spec.Maps[name]; !ok {
		return nil, fmt.Errorf("no map %s in the BPF object", name)
	}
	vars := map[string]*ebpf.VariableSpec{}
	for vn, v := range l.spec.Variables {
		if v.SectionName == name {
			vars[vn] = v
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{name: l.spec.Maps[name]}, Variables: vars,
		Types: l.spec.Types, ByteOrder: l.spec.ByteOrder,
	}, l.opts)
	if err != nil {
		return nil, fmt.Errorf("creating map %s (global variables): %w", name, err)
	}
	m := coll.DetachMap(name)
	if l.vars == nil {
		l.vars = map[string]*ebpf.Variable{}
	}
	for vn, v := range coll.Variables {
		l.vars[vn] = v
	}
	coll.Close()
	l.byName[name] = m
	l.tracer.dataMaps = append(l.tracer.dataMaps, m)
	return m, nil
}

// program loads one program against the maps already created.
func (l *loader) program(name string) (*ebpf.Program, error) {
	ps := l.spec.Programs[name].Copy()
	fixupMissingHelpers(ps)
	sub := &ebpf.CollectionSpec{
		Maps:     map[string]*ebpf.MapSpec{},
		Programs: map[string]*ebpf.ProgramSpec{name: ps},
		Types:    l.spec.Types, ByteOrder: l.spec.ByteOrder,
	}
	replace := map[string]*ebpf.Map{}
	for _, ins := range ps.Instructions {
		ref := ins.Reference()
		if !ins.IsLoadFromMap() || ref == "" {
			continue
		}
		m, err := l.mapNamed(ref)
		if err != nil {
			return nil, err
		}
		sub.Maps[ref], replace[ref] = l.spec.Maps[ref], m
	}
	opts := l.opts
	opts.MapReplacements = replace
	coll, err := ebpf.NewCollectionWithOptions(sub, opts)
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) && os.Getenv("FORKWATCH_VERIFIER_LOG") != "" {
			fmt.Fprintf(os.Stderr, "%+v\n", verr)
		}
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(name), nil
}

// Mode is the mode the tracer runs in.
func (t *Tracer) Mode() Mode { return t.mode }

// Attached lists each program and the hook it is attached to.
func (t *Tracer) Attached() []Attachment { return t.attached }

// Output names how records reach userspace: "ring_buffer" or
// "perf_event_array".
func (t *Tracer) Output() string {
	if t.perf != nil {
		return "perf_event_array"
	}
	return "ring_buffer"
}

// Fallbacks lists the plans New tried and the kernel refused, in the order
// tried: what auto mode found unsupported.
func (t *Tracer) Fallbacks() []Fallback { return t.fallbacks }

// StopReading makes a blocked ReadRecord return ringbuf.ErrClosed; the
// programs stay attached and the counters readable until Close.
func (t *Tracer) StopReading() {
	t.stopOnce.Do(func() {
		if t.ring != nil {
			t.ring.Close()
		}
		if t.perf != nil {
			t.perf.Close()
		}
	})
}

// Close detaches and unloads everything. It is safe to call more than once.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		t.StopReading()
		errs := []error{t.pressure.close()}
		for _, l := range t.links {
			errs = append(errs, l.Close())
		}
		for _, p := range t.progs {
			errs = append(errs, p.Close())
		}
		for _, m := range t.dataMaps {
			errs = append(errs, m.Close())
		}
		errs = append(errs, t.maps.Close())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// ReadRecord blocks until the next record and stores it in rec, reusing its
// buffer. It returns ringbuf.ErrClosed once the tracer is closed. With a
// perf event array, rec.RawSample is valid until the next call.
func (t *Tracer) ReadRecord(rec *ringbuf.Record) error {
	if t.ring != nil {
		return t.ring.ReadInto(rec)
	}
	for {
		// perf.ErrClosed and ringbuf.ErrClosed are both os.ErrClosed.
		if err := t.perf.ReadInto(&t.perfRec); err != nil {
			return err
		}
		if t.perfRec.LostSamples > 0 {
			// The programs counted these in events_lost already.
			continue
		}
		rec.RawSample = t.perfRec.RawSample
		rec.Remaining = 0
		return nil
	}
}

// Tail makes the kernel stream creations and exits in the cgroup with this
// id and every cgroup below it (Options.Tail must be set).
func (t *Tracer) Tail(cgroupID uint64) error {
	if err := t.maps.TailedCgroups.Put(cgroupID, uint8(1)); err != nil {
		return fmt.Errorf("tailing cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Untail stops streaming the cgroup with this id.
func (t *Tracer) Untail(cgroupID uint64) error {
	if err := t.maps.TailedCgroups.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untailing cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// EventsLost is the number of records the kernel could not hand over since
// load: ring-buffer reservations and perf outputs that failed (a full
// buffer), and, each of which may have been a failure, fork-path returns
// the kretprobe missed (kprobe mode, 6.7+ kernels) and runs of the failure
// programs the kernel skipped (MissedRuns).
func (t *Tracer) EventsLost() (uint64, error) {
	var perCPU []uint64
	if err := t.maps.EventsLost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading lost-event counters: %w", err)
	}
	var sum uint64
	for _, n := range perCPU {
		sum += n
	}
	return sum + t.missedForkReturns() + t.missedFailureRuns(), nil
}

// missedFailureRuns sums the runs the kernel skipped of the programs that
// report failures (see MissedRuns): each may have been a failure.
func (t *Tracer) missedFailureRuns() uint64 {
	var sum uint64
	t.eachMissed(func(p namedProg, n uint64) {
		if p.job == jobFailures {
			sum += n
		}
	})
	return sum
}

type namedProg struct {
	name, job string
	prog      *ebpf.Program
}

// MissedRuns returns, per attached program, the runs the kernel skipped
// because the program was already running on that CPU: kernels whose
// tracing programs can be preempted (7.x) skip the run of a second task that
// hits the same hook on that CPU meanwhile. Each skipped run is a failure,
// creation or exit forkwatch did not see. Kernels before 5.12 do not count
// them (nil).
func (t *Tracer) MissedRuns() map[string]uint64 {
	var out map[string]uint64
	t.eachMissed(func(p namedProg, n uint64) {
		if out == nil {
			out = make(map[string]uint64, len(t.attachedProgs))
		}
		out[p.name] += n
	})
	return out
}

// eachMissed calls f with each attached program's skipped runs, or not at
// all where the kernel has no program statistics.
func (t *Tracer) eachMissed(f func(p namedProg, missed uint64)) {
	for _, p := range t.attachedProgs {
		st, err := p.prog.Stats()
		if err != nil {
			return
		}
		f(p, st.RecursionMisses)
	}
}

// missedForkReturns sums the calls the fork-path kretprobes missed, where the
// kernel says (6.7+).
func (t *Tracer) missedForkReturns() uint64 {
	if len(t.forkRets) == 0 || t.noMissedInfo.Load() {
		return 0
	}
	var sum uint64
	for _, l := range t.forkRets {
		info, err := l.Info()
		var kp *link.KprobeInfo
		if err == nil && info.PerfEvent() != nil {
			kp = info.PerfEvent().Kprobe()
		}
		if kp == nil {
			t.noMissedInfo.Store(true)
			return 0
		}
		sum += kp.Missed
	}
	return sum
}

// SetNodeLimits hands kernel.pid_max and kernel.threads-max to the BPF
// side, which cannot read them on every kernel. Call it periodically with
// the values in force: both are sysctls an operator may change during an
// incident (where a cgroup v2 hierarchy is mounted, fw_sysctl also
// copies each write as it happens).
func (t *Tracer) SetNodeLimits(pidMax, threadsMax int64) error {
	v := forkwatchNodeLimits{PidMax: pidMax, ThreadsMax: threadsMax}
	if err := t.maps.NodeLimitsNow.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("updating node limits: %w", err)
	}
	return nil
}
