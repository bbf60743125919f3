package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// What a person sees on a terminal, at the widths people use: forkwatch's
// live view and doctor's report in tmux at 200, 120 and 80 columns, on a
// node with a leaking pod, a pod failing at its own pids.max and 50 quiet
// pods, every pod under a kubelet-like path
// …/kubepods/<qos>/pod<uid>/<64-hex container>. No row may wrap: tmux marks
// a row the terminal wrapped, and capture-pane -J joins it back, so a
// joined line wider than the pane is a wrapped row; and the rows a person
// looks for (the title, the table header, a pod's row) must each be one
// line, whole.

// screenSizes are the terminal sizes tried, largest first: the live view
// is resized from one to the next while it runs. 80×24 is the classic
// terminal.
var screenSizes = []struct{ cols, rows int }{{200, 50}, {120, 40}, {80, 24}}

// crowdedNode is a kubelet-like cgroup tree with processes in it, as a
// node looks during an incident.
type crowdedNode struct {
	tr       *testTree
	kubepods string // relative to the hierarchy root
	logs     string // the pod log directory naming the pods
	leaker   pod    // leaking threads: flagged as a spike
	failing  pod    // at its pids.max of 20, failing forks
	quiet    []pod
	dirs     map[string]string // pod UID → its container's cgroup directory
}

// newCrowdedNode makes the node's cgroups and names its pods; start runs
// its processes.
func newCrowdedNode(t *testing.T) *crowdedNode {
	t.Helper()
	tr := newTestTree(t)
	n := &crowdedNode{
		tr: tr, kubepods: tr.base + "/kubepods",
		leaker:  pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()},
		failing: pod{Namespace: "payments", Name: "ledger-0", UID: newPodUID()},
	}
	tr.mkdir(n.kubepods)
	tr.setMax(n.kubepods, 30000)
	n.dirs = map[string]string{}
	container := func(qos string, p pod, max int) {
		podCg := n.kubepods + "/" + qos + "/pod" + p.UID
		ctr := podCg + "/" + randomHex(32)
		tr.mkdir(ctr)
		tr.setMax(podCg, max)
		n.dirs[p.UID] = filepath.Join(tr.root, ctr)
	}
	for i := 0; i < 50; i++ {
		p := pod{Namespace: "default", Name: fmt.Sprintf("idle-%02d", i), UID: newPodUID()}
		n.quiet = append(n.quiet, p)
		container("besteffort", p, 1000)
	}
	container("burstable", n.leaker, 5000)
	container("burstable", n.failing, 20)
	n.logs = podLogsDir(t, append([]pod{n.leaker, n.failing}, n.quiet...)...)
	return n
}

// start runs the pods' processes: each quiet pod starts two processes
// and holds them; the leaker leaks 50 threads a second. The failing pod either
// fails over and over (a process fills it, tries 5 more forks and ends,
// again and again, as a crash-looping container would: it keeps creating
// tasks and keeps failing) or, with holdFull, is filled once and held at
// its limit. forkwatch counts creations from its start: started after it,
// every pod has a row in its table.
func (n *crowdedNode) start(t *testing.T, holdFull bool) {
	t.Helper()
	for _, p := range n.quiet {
		startStorm(t, "fill", "--max", "2", "--attempts", "0", "--cgroup", n.dirs[p.UID])
	}
	startStorm(t, "leak", "--after", "1s", "--rate", "50", "--duration", "10m", "--cgroup", n.dirs[n.leaker.UID])

	failDir := n.dirs[n.failing.UID]
	if holdFull {
		_, out := startStorm(t, "fill", "--cgroup", failDir, "--attempts", "5")
		select {
		case <-out: // filled: its summary is out
		case <-time.After(30 * time.Second):
			t.Fatal("storm fill did not fill the failing pod")
		}
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			cmd := exec.CommandContext(ctx, stormBin, "fill", "--cgroup", failDir, "--attempts", "5")
			cmd.Stdin = strings.NewReader("") // release at once
			_ = cmd.Run()
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// tmuxServer is a tmux server of the test's own (its own socket, in the
// test's temporary directory), so that a person's tmux sessions are left
// alone; the test's cleanup kills it and everything running in it.
type tmuxServer struct {
	t      *testing.T
	socket string
}

func newTmux(t *testing.T) *tmuxServer {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		if isCI() {
			t.Fatal("tmux is not installed (make test installs it: test/deps.sh)")
		}
		t.Skip("needs tmux")
	}
	s := &tmuxServer{t: t, socket: filepath.Join(t.TempDir(), "tmux")}
	t.Cleanup(func() { _ = exec.Command("tmux", "-S", s.socket, "kill-server").Run() })
	return s
}

func (s *tmuxServer) run(args ...string) string {
	s.t.Helper()
	// -u: UTF-8 whatever the locale, so "…" is one column as in a
	// person's terminal.
	out, err := exec.Command("tmux", append([]string{"-u", "-S", s.socket}, args...)...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// start runs command in a new detached session of cols×rows. The pane
// stays when the command exits, with what it printed last.
func (s *tmuxServer) start(session string, cols, rows int, command string) {
	s.t.Helper()
	s.run("new-session", "-d", "-s", session, "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows), command,
		";", "set-option", "-t", session, "remain-on-exit", "on")
}

// command is what runs in the session's pane, "" once it has exited.
func (s *tmuxServer) command(session string) string {
	s.t.Helper()
	out := strings.TrimSpace(s.run("list-panes", "-t", session, "-F", "#{pane_dead} #{pane_current_command}"))
	if strings.HasPrefix(out, "1") {
		return ""
	}
	return strings.TrimPrefix(out, "0 ")
}

// lines captures the pane, wrapped rows joined back (-J) and trailing
// blanks dropped; history includes what scrolled off the top.
func (s *tmuxServer) lines(session string, history bool) []string {
	s.t.Helper()
	args := []string{"capture-pane", "-p", "-J", "-t", session}
	if history {
		args = append(args, "-S", "-")
	}
	out := strings.Split(strings.TrimRight(s.run(args...), "\n"), "\n")
	for i, l := range out {
		out[i] = strings.TrimRight(l, " ")
	}
	return out
}

// tooWide lists the lines wider than cols: rows the terminal wrapped.
func tooWide(lines []string, cols int) []string {
	var bad []string
	for _, l := range lines {
		if n := utf8.RuneCountInString(l); n > cols {
			bad = append(bad, fmt.Sprintf("%d columns: %q", n, l))
		}
	}
	return bad
}

var (
	liveTitle = regexp.MustCompile(`^forkwatch  (\d\d:\d\d:\d\d)  node: \d+ tasks, pid_max \d+, threads-max \d+`)
	// A pod row ends with its nearest limit and the headroom left.
	podRow = regexp.MustCompile(`^  \S.* \(-?\d+ left\)$`)
	// Under a flagged pod's row, its top group of threads.
	groupRow = regexp.MustCompile(`^      \S.* ×[\d,]+( \([+-][\d.]+/s\))? in .+\[\d+\]$`)
)

// liveFrame is one complete drawing of the live view: its clock, and every
// row it must have, found.
type liveFrame struct {
	clock            string
	header, limits   int // line numbers of the POD and LIMIT headers
	leakRow, failRow string
	failure          string // a RECENT line of the failing pod
	lines            []string
}

// parseLiveFrame finds the parts of the live view in a capture; ok is false
// while the frame is not fully drawn (capture-pane can run mid-redraw).
func parseLiveFrame(lines []string, n *crowdedNode) (f liveFrame, ok bool) {
	f.lines = lines
	if len(lines) == 0 {
		return f, false
	}
	m := liveTitle.FindStringSubmatch(lines[0])
	if m == nil {
		return f, false
	}
	f.clock = m[1]
	f.header, f.limits = -1, -1
	recent := -1
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "  POD "):
			f.header = i
		case strings.HasPrefix(l, "  LIMIT "):
			f.limits = i
		case l == "RECENT FAILURES AND SPIKES":
			recent = i
		case strings.Contains(l, "LEAK "+n.leaker.Namespace+"/"+n.leaker.Name):
			f.leakRow = l
		case strings.Contains(l, n.failing.Namespace+"/"+n.failing.Name) && f.header >= 0 && f.limits < 0:
			f.failRow = l
		case strings.Contains(l, n.failing.Namespace+"/"+n.failing.Name) && strings.Contains(l, "EAGAIN"):
			f.failure = l
		}
	}
	return f, f.header > 0 && f.limits > f.header && recent > f.limits && f.leakRow != "" && f.failRow != "" && f.failure != ""
}

// problems lists what a person would find wrong with the frame at cols.
func (f liveFrame) problems(cols int) []string {
	bad := tooWide(f.lines, cols)
	if h := f.lines[f.header]; !strings.HasSuffix(h, "NEAREST LIMIT") {
		bad = append(bad, fmt.Sprintf("table header not on one line: %q", h))
	}
	// Every line from the header to the "… N more" line or the blank line
	// is a whole pod row, or a flagged pod's group of threads under its
	// row: a wrapped row's second half would be neither.
	leakGroup := ""
	for i, l := range f.lines[f.header+1:] {
		if l == "" || strings.HasPrefix(l, "  … ") {
			break
		}
		if groupRow.MatchString(l) && i > 0 && podRow.MatchString(f.lines[f.header+i]) {
			if f.lines[f.header+i] == f.leakRow {
				leakGroup = l
			}
			continue
		}
		if !podRow.MatchString(l) {
			bad = append(bad, fmt.Sprintf("not a whole pod row: %q", l))
		}
	}
	if leakGroup == "" {
		bad = append(bad, "no group of threads under the leaking pod's row")
	}
	for _, r := range []struct{ what, row string }{{"leaking", f.leakRow}, {"failing", f.failRow}} {
		if !podRow.MatchString(r.row) || !strings.Contains(r.row, "pod pids.max (") {
			bad = append(bad, fmt.Sprintf("the %s pod's row %q: want one line ending with its own limit, pod pids.max (N left)", r.what, r.row))
		}
	}
	if f.lines[f.limits-1] != "" {
		bad = append(bad, fmt.Sprintf("no blank line above the LIMIT block: %q", f.lines[f.limits-1]))
	}
	if !regexp.MustCompile(`EAGAIN.*pod pids\.max at \d+/20$`).MatchString(f.failure) {
		bad = append(bad, fmt.Sprintf("failure line %q: want it whole, ending with the pod's limit, pod pids.max at N/20", f.failure))
	}
	return bad
}

// The live view at 200, 120 and 80 columns, resized while it runs: each
// redraw fits the terminal it is drawn in, no row wraps, a pod's own limit
// is called pod pids.max, and the LIMIT block has a blank line above it.
func TestLiveViewFitsTerminal(t *testing.T) {
	requireRoot(t)
	tm := newTmux(t)
	n := newCrowdedNode(t)
	session := "live"
	first := screenSizes[0]
	tm.start(session, first.cols, first.rows,
		forkwatchBin+" --pod-logs-dir "+n.logs+" "+strings.Join(modeArgs(), " "))
	waitUntil(t, "forkwatch's first frame", func() bool {
		return liveTitle.MatchString(tm.lines(session, false)[0])
	}, func() string { return strings.Join(tm.lines(session, false), "\n") })
	n.start(t, false)

	var f liveFrame
	for i, size := range screenSizes {
		if i > 0 {
			tm.run("resize-window", "-t", session, "-x", fmt.Sprint(size.cols), "-y", fmt.Sprint(size.rows))
		}
		// A frame drawn after the resize: a complete one whose clock has
		// moved on from the last one seen at the previous size.
		before := f.clock
		show := func() string { return strings.Join(tm.lines(session, false), "\n") }
		// A view taller than the terminal, or with wrapped rows, never
		// shows all of this at once: its top has scrolled away.
		waitUntil(t, fmt.Sprintf("a whole frame on the %d×%d screen: the title on the first line, the POD table with the leaking pod flagged and the failing pod, the LIMIT block and the failing pod's failures", size.cols, size.rows), func() bool {
			var ok bool
			f, ok = parseLiveFrame(tm.lines(session, false), n)
			return ok && f.clock != before
		}, show)
		// The frame after that is surely drawn at the new size.
		drawn := f.clock
		waitUntil(t, "the next frame", func() bool {
			var ok bool
			f, ok = parseLiveFrame(tm.lines(session, false), n)
			return ok && f.clock != drawn
		}, show)
		t.Logf("live view at %d×%d:\n%s", size.cols, size.rows, strings.Join(f.lines, "\n"))
		if bad := f.problems(size.cols); len(bad) > 0 {
			t.Errorf("at %d columns:\n  %s\nthe pane:\n%s", size.cols, strings.Join(bad, "\n  "), strings.Join(f.lines, "\n"))
		}
		if len(f.lines) > size.rows {
			t.Errorf("at %d rows the pane shows %d lines", size.rows, len(f.lines))
		}
	}

	tm.run("send-keys", "-t", session, "C-c")
	waitUntil(t, "forkwatch to exit on Ctrl-C", func() bool { return tm.command(session) == "" },
		func() string { return strings.Join(tm.lines(session, false), "\n") })
	if progs := loadedForkwatchPrograms(t); len(progs) > 0 {
		t.Fatalf("programs left loaded after Ctrl-C: %v", progs)
	}
}
