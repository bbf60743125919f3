package tracer

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// FailureHooks says when the programs that see failed forks are attached.
type FailureHooks string

const (
	// HooksAlways attaches them for the whole run.
	HooksAlways FailureHooks = "always"
	// HooksPressure attaches them while a limit is within reach, where
	// they cost every syscall on the node while attached (tracepoint
	// mode: the syscall-exit tracepoints). In fentry and kprobe modes
	// they hook only the fork path and stay attached.
	HooksPressure FailureHooks = "pressure"
)

// Within reach: headroom below PressurePercent of the limit or PressureMin
// tasks, whichever is larger (the BPF side's pressure_pct, pressure_min).
const (
	PressurePercent = 10
	PressureMin     = 64
)

// HooksState is whether the failure hooks are attached, by which policy,
// and why.
type HooksState struct {
	Armed  bool         `json:"armed"`
	Policy FailureHooks `json:"policy"`
	Reason string       `json:"reason"`
	// WithinReach is when the limit that armed them (HooksPressure) was
	// seen within reach: the time of the counters' record or of the
	// reading of the limits. The hooks are attached from the event's time.
	WithinReach time.Time `json:"within_reach,omitzero"`
}

// onDemand is a failure hook attached and detached by pressure.
type onDemand struct {
	h    hook
	prog *ebpf.Program
}

// pressure is the state of arming by pressure (HooksPressure in
// tracepoint mode).
type pressure struct {
	mu      sync.Mutex
	hooks   []onDemand
	links   []link.Link
	state   HooksState
	watch   *ebpf.Variable // pressure_watch
	sent    *ebpf.Variable // pressure_sent
	last    *ebpf.Variable // pressure_last_ns
	enabled bool
}

// FailureHooks returns the failure hooks' state now.
func (t *Tracer) FailureHooks() HooksState {
	t.pressure.mu.Lock()
	defer t.pressure.mu.Unlock()
	return t.pressure.state
}

// setupPressure detaches the failure hooks (links, of hooks) and has the
// counters watch for a limit within reach instead, where the kernel allows
// it. On kernels without memory-mapped global variables (before 5.5) the
// hooks stay attached.
func (t *Tracer) setupPressure(l *loader, links []link.Link, hooks []onDemand) {
	p := &t.pressure
	p.watch, p.sent, p.last = l.vars[forkwatchVarPressureWatch], l.vars[forkwatchVarPressureSent], l.vars[forkwatchVarPressureLastNs]
	if p.watch == nil || p.sent == nil || p.last == nil || p.watch.ReadOnly() {
		p.state = HooksState{Armed: true, Policy: HooksAlways, Reason: "attached for the whole run: this kernel cannot arm them by pressure (needs 5.5+)"}
		return
	}
	// A task moved into a cgroup near its limit arms the hooks before the
	// program it is about to exec forks at all.
	for _, name := range []string{forkwatchProgFwBtfCgattach, forkwatchProgFwRawCgattach} {
		kind := onBTFTracepoint
		if name == forkwatchProgFwRawCgattach {
			kind = onRawTracepoint
		}
		if _, err := t.tryPlan(l, plan{mode: t.mode, hooks: []hook{{prog: name, kind: kind, at: []string{"cgroup_attach_task"}}}}, jobPressure); err == nil {
			t.attached = append(t.attached, Attachment{Program: name, Hook: hook{kind: kind, at: []string{"cgroup_attach_task"}}.describe(""), Mode: t.mode})
			break
		}
	}
	p.hooks = hooks
	p.links = links
	t.links = slices.DeleteFunc(t.links, func(l link.Link) bool { return slices.Contains(links, l) })
	for i := range t.attached {
		for _, h := range hooks {
			if t.attached[i].Program == h.h.prog {
				t.attached[i].OnDemand = true
			}
		}
	}
	p.enabled = true
	p.state = HooksState{Policy: HooksPressure, Armed: true}
	if err := t.disarm(fmt.Sprintf("no limit within reach: attached when one is (headroom below %d%% or %d tasks)", PressurePercent, PressureMin)); err != nil {
		p.state.Reason = "attached for the whole run: " + err.Error()
		p.enabled = false
	}
}

// jobPressure is the optional job of seeing tasks moved into a cgroup.
const jobPressure = "pressure on cgroup moves"

// Arm attaches the failure hooks (HooksPressure) if they are not: reason
// says which limit came within reach, and seen when. It reports whether it
// changed anything.
func (t *Tracer) Arm(reason string, seen time.Time) (bool, error) {
	p := &t.pressure
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.enabled || p.state.Armed {
		return false, nil
	}
	var links []link.Link
	for _, od := range p.hooks {
		lk, where, err := attach(od.h, od.prog)
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			return false, fmt.Errorf("attaching %s: %w", where, err)
		}
		links = append(links, lk)
	}
	p.links = links
	p.state.Armed, p.state.Reason, p.state.WithinReach = true, reason, seen
	return true, nil
}

// Disarm detaches the failure hooks (HooksPressure) if they are attached.
func (t *Tracer) Disarm(reason string) (bool, error) {
	t.pressure.mu.Lock()
	defer t.pressure.mu.Unlock()
	if !t.pressure.enabled || !t.pressure.state.Armed {
		return false, nil
	}
	return true, t.disarm(reason)
}

func (t *Tracer) disarm(reason string) error {
	p := &t.pressure
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	p.state.Armed, p.state.Reason, p.state.WithinReach = false, reason, time.Time{}
	// Watch, and let the next limit within reach be reported.
	errs = append(errs, p.sent.Set(uint8(0)), p.watch.Set(uint8(1)))
	return errors.Join(errs...)
}

// LastPressure is when a task was last created or moved within reach of a
// limit (zero if never).
func (t *Tracer) LastPressure() time.Time {
	if t.pressure.last == nil {
		return time.Time{}
	}
	var ns uint64
	if t.pressure.last.Get(&ns) != nil || ns == 0 {
		return time.Time{}
	}
	return NewClock().Wall(ns)
}

func (p *pressure) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	return errors.Join(errs...)
}

// PressureReason says which limit came within reach, from a pressure
// record (Record.IsPressure).
func PressureReason(f *Failure) string {
	l := f.Limit
	if l == nil {
		return fmt.Sprintf("a limit within reach of %s[%d]", f.Comm, f.PID)
	}
	var what string
	switch f.Cause {
	case CausePidsCgroup:
		what = fmt.Sprintf("pids cgroup %s at %d of %d", l.Cgroup, l.Current, l.Max)
	case CausePidMax:
		what = fmt.Sprintf("pid_max of PID namespace %d: %d of %d PIDs in use", l.PIDNamespace, l.Current, l.Max)
	case CauseRlimitNproc:
		uid := uint32(0)
		if l.UID != nil {
			uid = *l.UID
		}
		what = fmt.Sprintf("RLIMIT_NPROC of uid %d: %d of %d tasks", uid, l.Current, l.Max)
	case CauseThreadsMax:
		what = fmt.Sprintf("threads-max: %d of %d tasks", l.Current, l.Max)
	default:
		what = string(f.Cause)
	}
	return fmt.Sprintf("%s, seen as %s[%d] started a task in %s", what, f.Comm, f.PID, f.Cgroup)
}
