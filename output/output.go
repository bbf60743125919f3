// Package output renders what forkwatch knows: the failures and task events
// the kernel reports, attributed to pods (node.Failure, node.TaskEvent), and
// the node's state sampled once a second (node.Snapshot) — as a human view
// for a terminal, JSON Lines for machines and Prometheus metrics.
package output

import (
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/tracer"
)

// Writer receives events in the order they are read.
type Writer interface {
	// Attached reports the mode, the hooks the tracer attached to and
	// whether the failure hooks are armed.
	Attached(mode tracer.Mode, attached []tracer.Attachment, hooks tracer.HooksState) error
	// FailureHooks reports the failure hooks armed or disarmed (by
	// pressure, tracer.HooksPressure).
	FailureHooks(at time.Time, hooks tracer.HooksState) error
	// Failure reports one failed fork.
	Failure(f *node.Failure) error
	// Unseen reports forks the pids controller refused, counted from the
	// kernel's refusal counts, that no failure record reported (refused
	// while the failure hooks were not armed).
	Unseen(u *node.Unseen) error
	// Task reports a task created or exited: in a tailed pod, or a process
	// exiting after its forks failed (a victim).
	Task(ev *node.TaskEvent) error
	// EventsLost reports failures that may have gone unreported (see
	// tracer.EventsLost): delta since the last report, total since start.
	EventsLost(at time.Time, delta, total uint64) error
	// Rates reports the per-pod rates, spikes and forecasts sampled each
	// second; periodic is set once per --interval.
	Rates(s *node.Snapshot, periodic bool) error
	// Threads reports the --pod tail's pod's groups of threads
	// (Snapshot.Tailed), once per --interval.
	Threads(s *node.Snapshot) error
	// Flush writes out whatever is held back (folded bursts, buffers) that
	// is due at now; the caller calls it periodically and when idle.
	Flush(now time.Time) error
	// Close writes out everything still held back.
	Close() error
}
