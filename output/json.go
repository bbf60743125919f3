package output

import (
	"bufio"
	"encoding/json"
	"io"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/tracer"
)

// JSON writes JSON Lines: one object per event, each with "time" and
// "event". Output is buffered and written out on Flush.
type JSON struct {
	w   *bufio.Writer
	enc *json.Encoder
}

// NewJSON returns a JSON Lines writer on w.
func NewJSON(w io.Writer) *JSON {
	bw := bufio.NewWriterSize(w, 64<<10)
	return &JSON{w: bw, enc: json.NewEncoder(bw)}
}

type attachedEvent struct {
	Time         time.Time           `json:"time"`
	Event        string              `json:"event"`
	Mode         tracer.Mode         `json:"mode"`
	Programs     []attachedProgramJS `json:"programs"`
	FailureHooks tracer.HooksState   `json:"failure_hooks"`
}

type attachedProgramJS struct {
	Program  string      `json:"program"`
	Hook     string      `json:"hook"`
	Mode     tracer.Mode `json:"mode"`
	Fallback string      `json:"fallback,omitempty"`
	OnDemand bool        `json:"on_demand,omitempty"`
}

type hooksEvent struct {
	Time  time.Time `json:"time"`
	Event string    `json:"event"`
	tracer.HooksState
}

// FailureHooks writes {"event":"failure_hooks","armed","policy","reason"}
// at once.
func (j *JSON) FailureHooks(at time.Time, hooks tracer.HooksState) error {
	if err := j.enc.Encode(hooksEvent{Time: at, Event: "failure_hooks", HooksState: hooks}); err != nil {
		return err
	}
	return j.w.Flush()
}

// Attached writes {"event":"attached","mode":…,"programs":[{"program","hook","mode","fallback","on_demand"}…],"failure_hooks":{…}}:
// fallback says why a better mode's program was not used for that job;
// on_demand marks a failure hook attached only while failure_hooks.armed.
func (j *JSON) Attached(mode tracer.Mode, attached []tracer.Attachment, hooks tracer.HooksState) error {
	ev := attachedEvent{Time: time.Now(), Event: "attached", Mode: mode, FailureHooks: hooks}
	for _, a := range attached {
		ev.Programs = append(ev.Programs, attachedProgramJS{Program: a.Program, Hook: a.Hook, Mode: a.Mode, Fallback: a.Fallback, OnDemand: a.OnDemand})
	}
	if err := j.enc.Encode(ev); err != nil {
		return err
	}
	return j.w.Flush()
}

// Failure writes one fork_failed object.
func (j *JSON) Failure(f *node.Failure) error {
	_, err := j.w.Write(appendFailure(j.w.AvailableBuffer(), f))
	return err
}

type unseenEvent struct {
	Event string `json:"event"`
	*node.Unseen
}

// Unseen writes a refusals_unseen object.
func (j *JSON) Unseen(u *node.Unseen) error {
	return j.enc.Encode(unseenEvent{Event: "refusals_unseen", Unseen: u})
}

// Task writes one task_created or task_exited object.
func (j *JSON) Task(ev *node.TaskEvent) error { return j.enc.Encode(ev) }

type lostEvent struct {
	Time  time.Time `json:"time"`
	Event string    `json:"event"`
	Count uint64    `json:"count"`
	Total uint64    `json:"total"`
}

// EventsLost writes {"event":"events_lost","count":N,"total":M}.
func (j *JSON) EventsLost(at time.Time, delta, total uint64) error {
	return j.enc.Encode(lostEvent{Time: at, Event: "events_lost", Count: delta, Total: total})
}

// Flush writes buffered lines out.
func (j *JSON) Flush(time.Time) error { return j.w.Flush() }

// Close writes buffered lines out.
func (j *JSON) Close() error { return j.w.Flush() }
