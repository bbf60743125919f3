package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forkwatch/forkwatch/output"
	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/tracer"
)

// hooks arms and disarms the failure hooks by pressure
// (tracer.HooksPressure) and reports the refusals made while they were
// detached. The reader calls pressure and failure; the ticker second.
type hooks struct {
	t      *tracer.Tracer
	w      output.Writer
	mu     *sync.Mutex // the writer's
	calm   time.Duration
	ledger *node.RefusalLedger // nil unless by pressure

	// Unix ns: when a limit was last seen within reach from userspace, the
	// last failure read, and when the hooks were last attached and detached.
	near, lastFailure, armed, disarmed atomic.Int64
}

// ledgerSeconds is how often, in seconds, the pids hierarchy is walked
// while the failure hooks are detached.
const ledgerSeconds = 10

func newHooks(t *tracer.Tracer, w output.Writer, mu *sync.Mutex, calm time.Duration, root node.CgroupRoot, attr *node.Attributor) *hooks {
	h := &hooks{t: t, w: w, mu: mu, calm: calm}
	h.disarmed.Store(time.Now().UnixNano())
	if t.FailureHooks().Policy == tracer.HooksPressure {
		file, inLimit := t.RefusalCounts()
		h.ledger = node.NewRefusalLedger(root.Path, file, inLimit, attr)
	}
	return h
}

// start takes the refusal counts and arms the hooks for a cgroup already
// within reach.
func (h *hooks) start(now time.Time) error {
	_, near, err := h.ledger.Walk(now)
	if err != nil {
		return fmt.Errorf("reading the pids controller's refusal counts: %w", err)
	}
	return h.armNear(near, now)
}

// pressure arms the hooks for the pressure record p: a task created or
// moved within reach of the limit it names, at p.Time.
func (h *hooks) pressure(p *tracer.Failure) error {
	return h.arm(tracer.PressureReason(p), p.Time)
}

// failure notes a failure the reader reported.
func (h *hooks) failure(f *tracer.Failure) {
	h.lastFailure.Store(f.Time.UnixNano())
	h.ledger.Seen(f)
}

// second runs once a second with the sampler's snapshot: arms for a limit
// within reach in it, detaches after the calm period, and every
// ledgerSeconds walks the hierarchy for unseen refusals and limits within
// reach — when its counts can be compared with what the reader saw: the
// hooks detached for 2 s, or attached and no failure read for 2 s (the
// refusals of the milliseconds before they were attached).
func (h *hooks) second(now time.Time, snap *node.Snapshot, n int) error {
	if h.t.FailureHooks().Policy != tracer.HooksPressure {
		return nil
	}
	f, near := snap.WithinReach()
	if near {
		h.near.Store(now.UnixNano())
		if err := h.arm(fmt.Sprintf("%s at %d of %d, as read at %s", f.Limit, f.Current, f.Max, now.Format("15:04:05")), now); err != nil {
			return err
		}
	}
	state := h.t.FailureHooks()
	if state.Armed && !near {
		if err := h.disarmWhenCalm(now); err != nil {
			return err
		}
		state = h.t.FailureHooks()
	}
	since := h.disarmed.Load()
	if state.Armed {
		since = max(h.armed.Load(), h.lastFailure.Load())
	}
	if n%ledgerSeconds != 0 || now.Sub(time.Unix(0, since)) < 2*time.Second {
		return nil
	}
	unseen, nearest, err := h.ledger.Walk(now)
	if err != nil {
		return fmt.Errorf("reading the pids controller's refusal counts: %w", err)
	}
	h.mu.Lock()
	for i := range unseen {
		if err := h.w.Unseen(&unseen[i]); err != nil {
			h.mu.Unlock()
			return err
		}
	}
	h.mu.Unlock()
	return h.armNear(nearest, now)
}

// armNear arms the hooks for a pids cgroup the walk of the hierarchy found
// within reach.
func (h *hooks) armNear(near *limits.Pids, now time.Time) error {
	if near == nil {
		return nil
	}
	h.near.Store(now.UnixNano())
	return h.arm(fmt.Sprintf("pids cgroup %s at %d of %d, as read at %s", near.Path, near.Current, near.Max, now.Format("15:04:05")), now)
}

// arm attaches the hooks for a limit seen within reach at seen, and reports
// them armed as of the moment they are attached.
func (h *hooks) arm(reason string, seen time.Time) error {
	changed, err := h.t.Arm(reason, seen)
	if err != nil {
		return fmt.Errorf("attaching the failure hooks: %w", err)
	}
	if !changed {
		return nil
	}
	now := time.Now()
	h.near.Store(max(h.near.Load(), now.UnixNano()))
	h.armed.Store(now.UnixNano())
	return h.report(now)
}

// disarmWhenCalm detaches the hooks once no limit has been within reach,
// and no fork has failed, for the calm period.
func (h *hooks) disarmWhenCalm(now time.Time) error {
	last := max(h.near.Load(), h.lastFailure.Load(), h.t.LastPressure().UnixNano())
	if now.Sub(time.Unix(0, last)) < h.calm {
		return nil
	}
	changed, err := h.t.Disarm(fmt.Sprintf("no limit within reach and no failed fork for %s: attached again when a limit is", h.calm))
	if err != nil {
		return fmt.Errorf("detaching the failure hooks: %w", err)
	}
	if !changed {
		return nil
	}
	h.disarmed.Store(now.UnixNano())
	return h.report(now)
}

func (h *hooks) report(now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.w.FailureHooks(now, h.t.FailureHooks())
}
