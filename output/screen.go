package output

import (
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/forkwatch/forkwatch/output/node/kube"
)

// pipedWidth is the width of the ranked table written every --interval when
// stdout is not a terminal (a log file, kubectl logs, less): 120 columns,
// the least that holds every column of the table, so that a log viewer
// shows it unwrapped and the numbers of successive tables line up. Event
// lines stay whole, full paths included: one line per event, for grep.
const pipedWidth = 120

// TerminalSize returns the size of the terminal f writes to; ok is false
// when f is not a terminal.
func TerminalSize(f *os.File) (cols, rows int, ok bool) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 0, 0, false
	}
	return int(ws.Col), int(ws.Row), true
}

// columns is how many terminal columns s takes: one per rune, as for
// every character forkwatch prints ("…" and "×" included).
func columns(s string) int { return utf8.RuneCountInString(s) }

// clipEnd shortens s to n columns, "…" in the last.
func clipEnd(s string, n int) string {
	if columns(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// clipMiddle shortens s to n columns by cutting out its middle: both ends
// of a name say the most (a namespace and a replica's suffix; a cgroup's
// root and leaf).
func clipMiddle(s string, n int) string {
	if columns(s) <= n {
		return s
	}
	if n <= 1 {
		return clipEnd(s, n)
	}
	r := []rune(s)
	head := (n - 1) / 2
	tail := n - 1 - head
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

func padRight(s string, n int) string {
	if d := n - columns(s); d > 0 {
		return s + strings.Repeat(" ", d)
	}
	return s
}

func padLeft(s string, n int) string {
	if d := n - columns(s); d > 0 {
		return strings.Repeat(" ", d) + s
	}
	return s
}

// shortCgroup names a cgroup in at most n columns the way people read it.
// A pod's cgroup, and anything below it, by the start of the pod's UID, as
// UIDs are quoted (…/pod1c7b…, …/pod1c7b…/0a1b2c3d4e5f for a container):
// the path around it is kubelet's and says nothing. Other cgroups whole
// when they fit (/kubepods, /kubepods/burstable), else by their last name
// (…/burstable).
func shortCgroup(path string, n int) string {
	info := kube.ParseCgroupPath(path)
	var s string
	switch {
	case info.PodUID != "":
		s = "…/pod" + prefix(info.PodUID, 4) + "…"
		if info.ContainerID != "" {
			s += "/" + prefix(info.ContainerID, 12)
		}
	case columns(path) <= n:
		s = path
	default:
		s = "…/" + path[strings.LastIndexByte(path, '/')+1:]
	}
	return clipMiddle(s, n)
}

func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
