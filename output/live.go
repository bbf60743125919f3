package output

import (
	"fmt"
	"io"
	"strings"

	"github.com/forkwatch/forkwatch/output/node"
)

// eventLine is a failure, victim, spike or loss line, kept in parts so the
// live view can fit it to the terminal at each redraw. The end of a
// failure line is the limit that refused it, what a person looks for: to
// keep it whole the thread ID goes first, then the pod gives way (to its
// name without the namespace, then clipped), then the caller. A line whose
// end cannot be kept whole that way (a spike's numbers) is cut at the end
// instead, its pod left whole. What is leaking (leak) goes first of all:
// the live view shows it under the pod's row too. Piped, it is printed
// whole.
type eventLine struct {
	head   string // time and what happened: "14:02:11  EAGAIN ×20  "
	caller string // "calico-node[4121]", printed before (who); may be empty
	tid    string // " tid 4130", after the caller
	who    string // the pod, or the owner outside pods (Who)
	tail   string // the limit, the numbers
	leak   string // "; growing: pool-*-thread-* ×3,960 (+280/s) in java[4121]", or ""
}

func (l eventLine) String() string { return l.join(l.caller, l.tid, l.who) + l.leak }

func (l eventLine) join(caller, tid, who string) string {
	if caller != "" {
		return l.head + caller + tid + " (" + who + ")" + l.tail
	}
	return l.head + who + l.tail
}

// keepAtLeast is how much of the pod and of the caller a fitted line keeps.
const keepAtLeast = 8

// fit renders the line in at most n columns.
func (l eventLine) fit(n int) string {
	if whole := l.String(); columns(whole) <= n {
		return whole
	}
	caller, tid, who := l.caller, l.tid, l.who
	least := func(s string) string { return clipEnd(s, keepAtLeast) }
	if columns(l.join(caller, tid, who)) <= n || columns(l.join(least(caller), "", least(who))) > n {
		return clipEnd(l.join(caller, tid, who), n)
	}
	over := func() int { return columns(l.join(caller, tid, who)) - n }
	if over() > 0 {
		tid = ""
	}
	if o := over(); o > 0 {
		who = fitWho(who, max(columns(who)-o, min(columns(who), keepAtLeast)))
	}
	if o := over(); o > 0 {
		caller = clipMiddle(caller, columns(caller)-o)
	}
	return l.join(caller, tid, who)
}

// fitWho shortens a Who name to n columns: a pod's namespace goes first
// (the pod's name says more), then the middle of what is left.
func fitWho(who string, n int) string {
	if columns(who) <= n {
		return who
	}
	if i := strings.IndexByte(who, '/'); i > 0 && !strings.HasPrefix(who, "pod ") {
		who = who[i+1:]
	}
	return clipMiddle(who, n)
}

// recentLines is how many failure and spike lines the live view keeps
// below the table.
const recentLines = 12

func (t *Text) remember(l eventLine) {
	t.recent = append(t.recent, l)
	if len(t.recent) > recentLines {
		t.recent = t.recent[len(t.recent)-recentLines:]
	}
}

// size is the terminal's columns and rows: rows 0 when unknown (no limit
// on the height). It is read on every redraw (TIOCGWINSZ), not on SIGWINCH:
// the view is redrawn every second anyway, so a resize shows within a
// second with no signal handler and no goroutine, and nothing can miss a
// resize that happens between a signal and a redraw.
func (t *Text) size() (cols, rows int) {
	if t.Size != nil {
		return t.Size()
	}
	if t.term != nil {
		if c, r, ok := TerminalSize(t.term); ok {
			return c, r
		}
	}
	return 80, 0
}

// redraw clears the terminal and draws the live view, fitted to it: no
// line wider than the terminal (a wrapped row would push the view off the
// screen), and no more lines than it has rows — the lists are shortened,
// the latest failures first, down to three lines each.
func (t *Text) redraw(s *node.Snapshot) error {
	cols, rows := t.size()
	title := fmt.Sprintf("forkwatch  %s  node: %d tasks, pid_max %d, threads-max %d",
		s.Time.Format("15:04:05"), s.Node.Tasks, s.Node.PidMax, s.Node.ThreadsMax)
	if quit := "  (Ctrl-C to quit)"; columns(title+quit) <= cols {
		title += quit
	}

	pods, limits, recent := min(len(s.Pods), topPods), min(len(s.Forecasts), topLimits), len(t.recent)
	more := func(shown, all int) int {
		if shown < all {
			return 1
		}
		return 0
	}
	height := func() int {
		return 2 + // title, blank
			1 + pods + leakLines(s, pods) + more(pods, len(s.Pods)) + 1 + // POD table, blank
			1 + limits + more(limits, len(s.Forecasts)) + 1 + // LIMIT table, blank
			1 + max(recent, 1) // RECENT, its lines or "none"
	}
	if rows > 0 {
		// The last row stays free for the cursor: a line feed there
		// would scroll the title away.
		for _, shrink := range []struct {
			n     *int
			floor int
		}{{&recent, 3}, {&limits, 3}, {&pods, 3}, {&recent, 1}, {&limits, 1}, {&pods, 1}} {
			for height() > rows-1 && *shrink.n > shrink.floor {
				*shrink.n--
			}
		}
	}

	lines := []string{title, ""}
	lines = append(lines, podTable(s, cols, pods)...)
	lines = append(lines, "")
	lines = append(lines, limitTable(s, cols, limits)...)
	lines = append(lines, "", "RECENT FAILURES AND SPIKES")
	if len(t.recent) == 0 {
		lines = append(lines, "  none")
	}
	for _, l := range t.recent[len(t.recent)-recent:] {
		lines = append(lines, "  "+l.fit(cols-2))
	}
	if rows > 0 && len(lines) > rows-1 {
		lines = lines[:max(rows-1, 1)] // a terminal too small for the view
	}

	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J") // home, clear
	for _, l := range lines {
		b.WriteString(clipEnd(l, cols))
		b.WriteByte('\n')
	}
	// One write for the whole frame, so the terminal does not show half
	// of it.
	if err := t.w.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(t.out, b.String())
	return err
}
