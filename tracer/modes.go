package tracer

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// How forkwatch attaches, best first. Every mode's programs are in the one
// BPF object; New deletes what it does not use and tries, per job, the
// programs of each mode in turn: a kernel is probed by attaching, never by
// its version number.
//
// For failures auto tries fentry, kprobe, then tracepoint: the syscall
// tracepoints cost every syscall on the node while attached, the others
// only the fork path.
//
//	job        fentry                tracepoint                          kprobe
//	failures   fexit/copy_process    syscall exits of clone, clone3,     kretprobe on kernel_clone,
//	                                 fork and vfork                      _do_fork or do_fork
//	refusals   fexit/pids_can_fork   -                                   kretprobe/pids_can_fork
//	tasks      tp_btf/sched_process_fork and _exit, else          kprobe/wake_up_new_task,
//	           raw_tp/sched_process_fork and _exit (both)                tracepoint/sched/sched_process_exit
//
// The refusals job is optional: it makes the pids cause exact (fentry: also
// the cgroup a clone3 with CLONE_INTO_CGROUP was to join); without it the
// cause is found from the caller's cgroups, as in tracepoint mode.
type hookKind int

const (
	onTracepoint    hookKind = iota // at: group, name
	onRawTracepoint                 // at: name
	onFexit                         // at: the function (as in the program's section)
	onBTFTracepoint                 // at: name (as in the program's section)
	onKprobe                        // at: the first of these symbols the kernel has
	onKretprobe                     // at: as onKprobe
)

// A hook is one program and where it attaches.
type hook struct {
	prog     string
	kind     hookKind
	at       []string
	optional bool // nothing to attach to on older kernels (clone3 before 5.3)
	// kretprobes on calls that may block (vfork waits for its child):
	// follow up to kretprobeMaxActive calls at once.
	maxActive bool
}

func (h hook) describe(symbol string) string {
	switch h.kind {
	case onTracepoint:
		return "tracepoint/" + h.at[0] + "/" + h.at[1]
	case onRawTracepoint:
		return "raw_tp/" + h.at[0]
	case onFexit:
		return "fexit/" + h.at[0]
	case onBTFTracepoint:
		return "tp_btf/" + h.at[0]
	case onKprobe:
		return "kprobe/" + symbol
	default:
		return "kretprobe/" + symbol
	}
}

// A plan is one way of doing a job: the programs of one mode.
type plan struct {
	mode  Mode
	hooks []hook
}

// The jobs, as Fallback.Job names them.
const (
	jobFailures = "failures"
	jobRefusals = "pids refusals"
	jobTasks    = "task counts"
)

// A job is something forkwatch needs attached.
type job struct {
	what     string
	required bool
	plans    []plan
}

// The fork path's top function: kernel_clone() since 5.10, _do_fork() from
// 4.2, do_fork() before (3.10).
var forkPath = []string{"kernel_clone", "_do_fork", "do_fork"}

// kretprobeMaxActive is how many fork-path calls a kretprobe follows at
// once (the kernel's cap). Kernels default to 2 per CPU: a vfork() (and
// posix_spawn()) holds one until its child execs, and a call started when
// all are taken is missed.
const kretprobeMaxActive = 4096

// jobs returns what to attach for mode, best plan first. perf selects the
// programs writing to a perf event array; rh7 those for 3.10's cgroups.
func jobs(mode Mode, perf, rh7 bool) ([]job, error) {
	kretFork, kpNewTask, tpExit := forkwatchProgFwKforkRing, forkwatchProgFwKpTaskRing, forkwatchProgFwTpExitRing
	switch {
	case rh7:
		kretFork, kpNewTask, tpExit = forkwatchProgFwKforkRh7, forkwatchProgFwKpTaskRh7, forkwatchProgFwTpExitRh7
	case perf:
		kretFork, kpNewTask, tpExit = forkwatchProgFwKforkPerf, forkwatchProgFwKpTaskPerf, forkwatchProgFwTpExitPerf
	}
	failures := map[Mode][]plan{
		ModeFentry: {{ModeFentry, []hook{{prog: forkwatchProgFwFexitCopy, kind: onFexit, at: []string{"copy_process"}}}}},
		ModeTracepoint: {{ModeTracepoint, archSyscalls([]hook{
			{prog: forkwatchProgFwTpClone, kind: onTracepoint, at: []string{"syscalls", "sys_exit_clone"}},
			{prog: forkwatchProgFwTpClone3, kind: onTracepoint, at: []string{"syscalls", "sys_exit_clone3"}, optional: true},
			{prog: forkwatchProgFwTpFork, kind: onTracepoint, at: []string{"syscalls", "sys_exit_fork"}},
			{prog: forkwatchProgFwTpVfork, kind: onTracepoint, at: []string{"syscalls", "sys_exit_vfork"}},
		})}},
		ModeKprobe: {{ModeKprobe, []hook{{prog: kretFork, kind: onKretprobe, at: forkPath, maxActive: true}}}},
	}
	refusals := map[Mode][]plan{
		ModeFentry: {{ModeFentry, []hook{{prog: forkwatchProgFwFexitPids, kind: onFexit, at: []string{"pids_can_fork"}}}}},
		ModeKprobe: {{ModeKprobe, []hook{{prog: forkwatchProgFwKretPids, kind: onKretprobe, at: []string{"pids_can_fork"}}}}},
	}
	// The task counters run on every creation and exit on the node: BTF
	// tracepoints (5.5+) read the task directly, raw ones through helpers.
	tasks := map[Mode][]plan{
		ModeTracepoint: {
			{ModeTracepoint, []hook{
				{prog: forkwatchProgFwBtfFork, kind: onBTFTracepoint, at: []string{"sched_process_fork"}},
				{prog: forkwatchProgFwBtfExit, kind: onBTFTracepoint, at: []string{"sched_process_exit"}},
			}},
			{ModeTracepoint, []hook{
				{prog: forkwatchProgFwRawFork, kind: onRawTracepoint, at: []string{"sched_process_fork"}},
				{prog: forkwatchProgFwRawExit, kind: onRawTracepoint, at: []string{"sched_process_exit"}},
			}},
		},
		ModeKprobe: {{ModeKprobe, []hook{
			{prog: kpNewTask, kind: onKprobe, at: []string{"wake_up_new_task"}},
			{prog: tpExit, kind: onTracepoint, at: []string{"sched", "sched_process_exit"}},
		}}},
	}

	order := map[Mode][3][]Mode{ // failures, refusals, tasks
		// Failures: kprobe before the syscall tracepoints, which tax every
		// syscall on the node while attached (see README "Modes").
		ModeAuto:       {{ModeFentry, ModeKprobe, ModeTracepoint}, {ModeFentry, ModeKprobe}, {ModeTracepoint, ModeKprobe}},
		ModeFentry:     {{ModeFentry}, {ModeFentry}, {ModeTracepoint}},
		ModeTracepoint: {{ModeTracepoint}, nil, {ModeTracepoint}},
		ModeKprobe:     {{ModeKprobe}, {ModeKprobe}, {ModeKprobe}},
	}[mode]
	if rh7 {
		// The other modes' programs read kernfs-based cgroups (3.14+) and
		// need global variables (5.2+).
		if mode != ModeAuto && mode != ModeKprobe {
			return nil, &UnsupportedError{Mode: mode, Refused: []Fallback{{Mode: mode, Job: jobFailures, Reason: "its cgroups predate kernfs (3.10): only kprobe mode runs here"}}}
		}
		order = [3][]Mode{{ModeKprobe}, {ModeKprobe}, {ModeKprobe}}
	}
	pick := func(from map[Mode][]plan, modes []Mode) []plan {
		var out []plan
		for _, m := range modes {
			out = append(out, from[m]...)
		}
		return out
	}
	return []job{
		{what: jobFailures, required: true, plans: pick(failures, order[0])},
		{what: jobRefusals, plans: pick(refusals, order[1])},
		{what: jobTasks, required: true, plans: pick(tasks, order[2])},
	}, nil
}

// UnsupportedError says why the kernel cannot run a mode: the plans it
// refused for a job forkwatch cannot do without.
type UnsupportedError struct {
	Mode    Mode
	Refused []Fallback
}

func (e *UnsupportedError) Error() string {
	reasons := make([]string, len(e.Refused))
	for i, f := range e.Refused {
		reasons[i] = f.Reason
		if e.Mode == ModeAuto {
			reasons[i] = string(f.Mode) + ": " + f.Reason
		}
	}
	if e.Mode == ModeAuto {
		return "this kernel runs none of forkwatch's modes: " + strings.Join(reasons, "; ")
	}
	return fmt.Sprintf("this kernel cannot run %s mode: %s; --mode auto picks what it can run", e.Mode, strings.Join(reasons, "; "))
}

func (e *UnsupportedError) Unwrap() error { return ErrUnsupported }

// Fallback is a plan New tried and the kernel refused.
type Fallback struct {
	Mode   Mode
	Job    string // "failures", "pids refusals", "task counts"
	Reason string // "fexit/copy_process: operation not permitted"
}

// btfHub is where BTF files for kernels built without it are published.
const btfHub = "https://github.com/aquasecurity/btfhub-archive"

// kernelTypes returns the BTF to relocate the programs against: the file
// given, or nil for the kernel's own (checked to exist, through cache).
func kernelTypes(file string, cache *btf.Cache) (*btf.Spec, error) {
	if file != "" {
		if _, err := os.Stat(file); err != nil {
			return nil, &BTFError{fmt.Errorf("--btf: %w", err)}
		}
		spec, err := btf.LoadSpec(file)
		if err != nil {
			hint := ""
			if strings.HasSuffix(file, ".tar.xz") {
				hint = " (BTFHub's files are archives: unpack with tar -xJf first)"
			}
			return nil, &BTFError{fmt.Errorf("--btf %s: not a BTF file: %w%s", file, err, hint)}
		}
		return spec, nil
	}
	if _, err := cache.Kernel(); err != nil {
		var uts unix.Utsname
		_ = unix.Uname(&uts)
		return nil, &BTFError{fmt.Errorf("this kernel (%s) has no BTF (/sys/kernel/btf/vmlinux: %v), which forkwatch needs to read its structures: download the BTF file for this exact kernel from BTFHub (%s, e.g. centos/7/x86_64/%s.btf.tar.xz), unpack it and pass it with --btf FILE",
			unix.ByteSliceToString(uts.Release[:]), errors.Unwrap(err), btfHub, unix.ByteSliceToString(uts.Release[:]))}
	}
	return nil, nil
}

// BTFError is a missing or unusable BTF file.
type BTFError struct{ err error }

func (e *BTFError) Error() string { return e.err.Error() }
func (e *BTFError) Unwrap() error { return e.err }

// legacyCgroups reports whether the kernel's cgroups predate kernfs (3.10):
// struct cgroup has a dentry and no kernfs node.
func legacyCgroups(types *btf.Spec, cache *btf.Cache) bool {
	if types == nil {
		var err error
		if types, err = cache.Kernel(); err != nil {
			return false
		}
	}
	var cg *btf.Struct
	if err := types.TypeByName("cgroup", &cg); err != nil {
		return false
	}
	for _, m := range cg.Members {
		if m.Name == "kn" {
			return false
		}
	}
	return true
}

// fixupMissingHelpers makes programs loadable on verifiers that check every
// helper call, reachable or not (before 4.15): calls of helpers the kernel
// lacks become r0 = 0. forkwatch's programs call those only in branches
// that CO-RE relocations make dead on such kernels (bpf_task_pt_regs() is
// guarded by the kernel's own enum bpf_func_id). cilium/ebpf already turns
// bpf_probe_read_kernel() into bpf_probe_read() where needed.
func fixupMissingHelpers(ps *ebpf.ProgramSpec) {
	if ps.Type != ebpf.Kprobe && ps.Type != ebpf.TracePoint {
		return
	}
	for i := range ps.Instructions {
		ins := &ps.Instructions[i]
		if !ins.IsBuiltinCall() {
			continue
		}
		switch fn := asm.BuiltinFunc(ins.Constant); fn {
		case asm.FnGetCurrentTaskBtf, asm.FnTaskPtRegs, asm.FnGetFuncRet:
			if err := features.HaveProgramHelper(ps.Type, fn); errors.Is(err, ebpf.ErrNotSupported) {
				*ins = asm.Mov.Imm(asm.R0, 0).WithMetadata(ins.Metadata)
			}
		}
	}
}

// notFound reports whether attaching failed because the kernel has no such
// hook (kernels before 5.11 say EINVAL for a missing kprobe symbol).
func notFound(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EINVAL)
}

// attach attaches prog at h and returns the link and the hook's name.
func attach(h hook, prog *ebpf.Program) (link.Link, string, error) {
	switch h.kind {
	case onTracepoint:
		l, err := link.Tracepoint(h.at[0], h.at[1], prog, nil)
		return l, h.describe(""), err
	case onRawTracepoint:
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: h.at[0], Program: prog})
		return l, h.describe(""), err
	case onFexit, onBTFTracepoint:
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		return l, h.describe(""), err
	}
	if !haveKprobes() {
		return nil, h.describe(h.at[0]), errors.New("the kernel has no kprobes (CONFIG_KPROBE_EVENTS)")
	}
	var err error
	for _, sym := range h.at {
		var l link.Link
		switch {
		case h.kind == onKprobe:
			l, err = link.Kprobe(sym, prog, nil)
		case h.maxActive:
			// A raised maxactive needs the tracefs interface; kernels
			// without it (before 4.12) take the default.
			l, err = link.Kretprobe(sym, prog, &link.KprobeOptions{RetprobeMaxActive: kretprobeMaxActive, TraceFSPrefix: "forkwatch"})
			if (err != nil && !notFound(err)) || errors.Is(err, unix.EINVAL) {
				l, err = link.Kretprobe(sym, prog, nil)
			}
		default:
			l, err = link.Kretprobe(sym, prog, nil)
		}
		if err == nil {
			return l, h.describe(sym), nil
		}
		if !notFound(err) {
			return nil, h.describe(sym), err
		}
	}
	return nil, h.describe(strings.Join(h.at, "|")), fmt.Errorf("none of %s in this kernel: %w", strings.Join(h.at, ", "), err)
}

// short trims an error for the one line a user reads: the program's name is
// in the hook already, and cilium/ebpf's hint about the memlock limit is
// beside the point when the kernel refuses a program type (fentry returns
// EPERM whatever the limit).
func short(err error) string {
	s := err.Error()
	if i := strings.Index(s, " (MEMLOCK may be too low"); i >= 0 {
		s = s[:i]
	}
	if rest, ok := strings.CutPrefix(s, "program "); ok {
		if i := strings.Index(rest, ": "); i >= 0 {
			s = rest[i+2:]
		}
	}
	return s
}

// haveKprobes reports whether kprobes can be created: through the kprobe
// PMU (4.17+) or tracefs's kprobe_events.
func haveKprobes() bool {
	for _, p := range []string{"/sys/bus/event_source/devices/kprobe/type", "/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}
