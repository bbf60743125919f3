// Package output writes what forkwatch sees: a human view for a terminal and
// JSON Lines for machines.
package output

import (
	"time"

	"github.com/forkwatch/forkwatch/tracer"
)

// Writer receives events in the order they are read.
type Writer interface {
	// Attached reports the mode and the hooks the tracer attached to.
	Attached(mode tracer.Mode, attached []tracer.Attachment) error
	// Failure reports one failed fork.
	Failure(f *tracer.Failure) error
	// Task reports a task created or exited: in a tailed pod, or a process
	// exiting after its forks failed (a victim).
	Task(ev *tracer.TaskEvent) error
	// EventsLost reports failures the kernel dropped because the ring
	// buffer was full: delta since the last report, total since start.
	EventsLost(at time.Time, delta, total uint64) error
	// Rates reports the per-pod rates, spikes and forecasts sampled each
	// second; periodic is set once per --interval.
	Rates(s *tracer.Snapshot, periodic bool) error
	// Flush writes out whatever is held back (folded bursts, buffers) that
	// is due at now; the caller calls it periodically and when idle.
	Flush(now time.Time) error
	// Close writes out everything still held back.
	Close() error
}
