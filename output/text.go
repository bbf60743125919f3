package output

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/tracer"
)

// Go's runtime retries a failed clone up to 20 times, sleeping 1, 2, … 20 ms
// between tries (retryOnEAGAIN): ~210 ms for a whole burst, never more than
// ~20 ms between two tries. glibc's callers and shells retry similarly. The
// text view folds a burst from one thread against one limit into one line.
const (
	// foldQuiet ends a burst: no further failure of it for this long.
	foldQuiet = 150 * time.Millisecond
	// foldMaxAge bounds how long a line is held back, so a thread retrying
	// forever still shows up within a second.
	foldMaxAge = time.Second
)

// Text writes one line per failure, or per burst of retries.
type Text struct {
	w *bufio.Writer
	// HostPIDNamespace is the inode of the node's PID namespace; pid_max
	// failures in other namespaces name theirs.
	HostPIDNamespace uint64
	// Diag receives what is about forkwatch itself rather than the node
	// (the mode it attached in): stderr, so that stdout stays the events.
	Diag io.Writer
	// Live redraws a top-like table every second (on a terminal); event
	// lines then go below the table instead of scrolling.
	Live bool
	// Size, when set, is the live view's terminal size (columns, rows;
	// rows 0: no limit). Unset, it is read from the terminal NewText was
	// given, on every redraw.
	Size func() (cols, rows int)

	out    io.Writer
	term   *os.File // out, when it is a file: its terminal size
	folds  map[foldKey]*fold
	recent []eventLine
	leaks  []leak // the flagged pods' top groups, from the latest snapshot
}

type foldKey struct {
	pid, tid uint32
	syscall  string
	errno    string
	cause    tracer.Cause
	// The limit's identity; rlimit_nproc's uid is the caller's, already
	// in the key through pid.
	limitCgroup string
	limitNS     uint64
}

type fold struct {
	first, last time.Time
	count       int
	f           node.Failure
}

// NewText returns a text writer on w.
func NewText(w io.Writer) *Text {
	t := &Text{w: bufio.NewWriter(w), out: w, Diag: os.Stderr, folds: make(map[foldKey]*fold)}
	t.term, _ = w.(*os.File)
	return t
}

// Attached writes the chosen mode and hooks to Diag, and whether the
// failure hooks are armed.
func (t *Text) Attached(mode tracer.Mode, attached []tracer.Attachment, state tracer.HooksState) error {
	hooks := make([]string, len(attached))
	var fallbacks []string
	for i, a := range attached {
		hooks[i] = a.Hook
		if a.OnDemand {
			hooks[i] += " (on demand)"
		}
		if a.Fallback != "" && !slices.Contains(fallbacks, a.Fallback) {
			fallbacks = append(fallbacks, a.Fallback)
		}
	}
	line := fmt.Sprintf("forkwatch: %s mode, attached to %s", mode, strings.Join(hooks, ", "))
	if len(fallbacks) > 0 {
		line += " (not used: " + strings.Join(fallbacks, "; ") + ")"
	}
	_, err := fmt.Fprintf(t.Diag, "%s\nforkwatch: %s\n", line, hooksText(state))
	return err
}

// FailureHooks writes the change to Diag.
// An arming says how long after the limit was seen within reach the hooks
// were attached.
func (t *Text) FailureHooks(at time.Time, hooks tracer.HooksState) error {
	var after string
	if hooks.Armed && !hooks.WithinReach.IsZero() {
		after = fmt.Sprintf(" (attached %s after)", at.Sub(hooks.WithinReach).Round(time.Millisecond))
	}
	_, err := fmt.Fprintf(t.Diag, "forkwatch: %s %s%s\n", at.Format("15:04:05"), hooksText(hooks), after)
	return err
}

func hooksText(h tracer.HooksState) string {
	if h.Armed {
		return "failure hooks armed: " + h.Reason
	}
	return "failure hooks not armed: " + h.Reason
}

// Failure holds the failure back until its burst ends (see Flush).
func (t *Text) Failure(f *node.Failure) error {
	k := foldKey{pid: f.PID, tid: f.TID, syscall: f.Syscall, errno: f.Errno, cause: f.Cause}
	if l := f.Limit; l != nil {
		k.limitCgroup, k.limitNS = l.Cgroup, l.PIDNamespace
	}
	if fd, ok := t.folds[k]; ok {
		fd.count++
		fd.last = f.Time
		fd.f = *f // the latest use of the limit
		return nil
	}
	t.folds[k] = &fold{first: f.Time, last: f.Time, count: 1, f: *f}
	return nil
}

// Task writes a line per created or exited task, e.g.
//
//	14:02:11  + thread   java[88123] tid 88200 (shop/cart-7d9)
//	14:02:12  calico-node[4121] (kube-system/calico-node-56bgm) exited (code 2) 180 ms after 20 failed clones
func (t *Text) Task(ev *node.TaskEvent) error {
	at := ev.Time.Format("15:04:05") + "  "
	if ev.Failures > 0 {
		// The failures come first: print the victim's bursts now.
		if err := t.flush(func(k foldKey, _ *fold) bool { return k.pid == ev.PID }); err != nil {
			return err
		}
		t.emit(eventLine{head: at, caller: fmt.Sprintf("%s[%d]", ev.Comm, ev.PID), who: Who(ev.Cgroup, ev.Who),
			tail: fmt.Sprintf(" exited (%s) %d ms after %d failed %ss", exitText(ev),
				ev.Time.Sub(ev.LastFailure).Milliseconds(), ev.Failures, ev.FailedSyscall)})
		return nil
	}
	var b strings.Builder
	b.WriteString(at)
	sign := "+"
	if ev.Event == "task_exited" {
		sign = "-"
	}
	fmt.Fprintf(&b, "%s %-7s  %s[%d]", sign, ev.Kind, ev.Comm, ev.PID)
	if ev.TID != ev.PID {
		fmt.Fprintf(&b, " tid %d", ev.TID)
	}
	fmt.Fprintf(&b, " (%s)", Who(ev.Cgroup, ev.Who))
	if ev.Event == "task_exited" && ev.Kind == tracer.KindProcess {
		b.WriteString(" " + exitText(ev))
	}
	t.emit(eventLine{head: b.String()})
	return nil
}

func exitText(ev *node.TaskEvent) string {
	if ev.Signal != "" {
		return "killed by " + ev.Signal
	}
	if ev.ExitCode != nil {
		return fmt.Sprintf("code %d", *ev.ExitCode)
	}
	return "exited"
}

// EventsLost writes a warning line at once.
func (t *Text) EventsLost(at time.Time, delta, total uint64) error {
	t.emit(eventLine{head: fmt.Sprintf("%s  WARNING: %d events lost (ring buffer full: raise --ring-buffer-size; or runs the kernel skipped); %d lost since start",
		at.Format("15:04:05"), delta, total)})
	return t.w.Flush()
}

// Unseen prints refusals counted from the kernel's counts:
//
//	14:02:11  20 forks refused in shop/cart-7d9 by pids cgroup /kubepods/…/pod…, counted from pids.events: the failure hooks were not attached
func (t *Text) Unseen(u *node.Unseen) error {
	limit := "a pids cgroup"
	if u.LimitCgroup != "" {
		limit = "pids cgroup " + u.LimitCgroup
	}
	t.emit(eventLine{head: fmt.Sprintf("%s  %d forks refused in %s by %s, counted from the kernel's refusal count: the failure hooks were not attached",
		u.Time.Format("15:04:05"), u.Count, Who(u.Cgroup, u.Who), limit)})
	return t.w.Flush()
}

// Flush prints the bursts that ended (quiet for foldQuiet) or that have been
// held for foldMaxAge, oldest first.
func (t *Text) Flush(now time.Time) error {
	return t.flush(func(_ foldKey, fd *fold) bool {
		return now.Sub(fd.last) >= foldQuiet || now.Sub(fd.first) >= foldMaxAge
	})
}

// Close prints every burst still held.
func (t *Text) Close() error {
	return t.flush(func(foldKey, *fold) bool { return true })
}

// flush prints the bursts for which due is true, oldest first.
func (t *Text) flush(due func(foldKey, *fold) bool) error {
	var keys []foldKey
	for k, fd := range t.folds {
		if due(k, fd) {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return t.folds[keys[i]].first.Before(t.folds[keys[j]].first) })
	for _, k := range keys {
		fd := t.folds[k]
		delete(t.folds, k)
		t.emit(t.line(fd, t.Live))
	}
	return t.w.Flush()
}

// emit writes an event line, or keeps it for the live view.
func (t *Text) emit(l eventLine) {
	if t.Live {
		t.remember(l)
		return
	}
	t.w.WriteString(l.String())
	t.w.WriteByte('\n')
}

// line renders e.g.
//
//	14:02:11  EAGAIN ×20  calico-node[4121] (kube-system/calico-node-56bgm)  pids cgroup /kubepods at 49152/49152
//
// With short (the live view) a pod's or container's own limit is named as
// such and other cgroups short: pod pids.max at 20/20.
func (t *Text) line(fd *fold, short bool) eventLine {
	f := &fd.f
	l := eventLine{head: fd.first.Format("15:04:05") + "  " + f.Errno}
	if fd.count > 1 {
		l.head += fmt.Sprintf(" ×%d", fd.count)
	}
	l.head += "  "
	l.caller = fmt.Sprintf("%s[%d]", f.Comm, f.PID)
	if f.TID != f.PID {
		l.tid = fmt.Sprintf(" tid %d", f.TID)
	}
	l.who = Who(f.Cgroup, f.Who)
	l.tail = "  " + t.limitText(f, short)
	if g := t.leakFor(f); g != "" {
		l.leak = "; " + g
	}
	return l
}

// Who names a task: namespace/pod, the pod UID when kubelet's log
// directory did not name it, or its cgroup's owner (e.g. kubelet.service).
func Who(cgroup string, w node.Who) string {
	switch {
	case w.Pod != nil && w.Pod.Name != "":
		return w.Pod.Namespace + "/" + w.Pod.Name
	case w.Pod != nil:
		return "pod " + w.Pod.UID
	case w.Owner != "":
		return w.Owner
	}
	return cgroup
}

func (t *Text) limitText(f *node.Failure, short bool) string {
	l := f.Limit
	switch {
	case f.Cause == tracer.CausePidsCgroup && l != nil && short:
		info := kube.ParseCgroupPath(f.Cgroup)
		name := shortCgroup(l.Cgroup, 40)
		switch {
		case info.PodCgroup != "" && l.Cgroup == info.PodCgroup:
			name = "pod pids.max"
		case info.ContainerID != "" && l.Cgroup == f.Cgroup:
			name = "container pids.max"
		}
		return fmt.Sprintf("%s at %d/%d", name, l.Current, l.Max)
	case f.Cause == tracer.CausePidsCgroup && l != nil:
		return fmt.Sprintf("pids cgroup %s at %d/%d", l.Cgroup, l.Current, l.Max)
	case f.Cause == tracer.CausePidMax && l != nil:
		if t.HostPIDNamespace != 0 && l.PIDNamespace != t.HostPIDNamespace {
			return fmt.Sprintf("pid_max of PID namespace %d: %d/%d PIDs in use", l.PIDNamespace, l.Current, l.Max)
		}
		return fmt.Sprintf("pid_max: %d/%d PIDs in use", l.Current, l.Max)
	case f.Cause == tracer.CauseRlimitNproc && l != nil && l.UID != nil:
		return fmt.Sprintf("ulimit -u of uid %d: %d/%d tasks", *l.UID, l.Current, l.Max)
	case f.Cause == tracer.CauseThreadsMax && l != nil:
		return fmt.Sprintf("threads-max: %d/%d tasks", l.Current, l.Max)
	case f.Cause == tracer.CauseNoMemory:
		return "out of memory"
	case f.Cause == tracer.CauseDenied:
		return "denied by policy (seccomp, an LSM or a missing capability), not a limit"
	}
	return "no limit at its edge (cause unknown)"
}
