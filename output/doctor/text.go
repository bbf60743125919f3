package doctor

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"unicode/utf8"
)

// Text layout. The report is laid out for the terminal it is printed on,
// 80 columns when it is not a terminal; the last column stays free, as
// some terminals wrap a line that fills it. The table's name column is as
// wide as its longest row, as far as the terminal allows; prose wraps at
// proseWidth at most, for reading, but a path is broken only where the
// terminal forces it.
const (
	DefaultWidth = 80
	numbersWidth = 27 // " %9s %10s %5s": IN USE, MAX, USE
	proseWidth   = 100
	minWidth     = 40
)

// row is a row of the limits table. Its label is indent, name and keep;
// where the column is too narrow, optional goes first, then name is cut
// in its middle: keep (a setting and its value) stays whole.
type row struct {
	indent, name, keep, optional string
	cur, max, use                string
	section                      bool // a section title, on a line of its own
}

func (r row) label() string { return r.indent + r.name + r.keep + r.optional }

// fit renders the label in at most n columns.
func (r row) fit(n int) string {
	if l := r.label(); utf8.RuneCountInString(l) <= n {
		return l
	}
	if l := r.indent + r.name + r.keep; utf8.RuneCountInString(l) <= n {
		return l
	}
	room := n - utf8.RuneCountInString(r.indent+r.keep)
	if room < 1 {
		return clip(r.indent+r.name+r.keep, n)
	}
	return r.indent + clip(r.name, room) + r.keep
}

// WriteText writes the report for a person, fitted to a terminal of width
// columns (DefaultWidth when stdout is not a terminal): a table of the
// limits and their use, then the risks and warnings, each with its
// evidence and fix. Info findings that are rows of the table are not
// repeated.
func (r *Report) WriteText(w io.Writer, width int) error {
	usable := max(width, minWidth) - 1
	bw := bufio.NewWriter(w)
	var rows []row
	add := func(rw row) { rows = append(rows, rw) }
	section := func(title string) { add(row{name: title, section: true}) }
	numRow := func(indent, name, optional string, cur, max int64) {
		use := ""
		if cur >= 0 && max > 0 {
			use = fmt.Sprintf("%d%%", pct(cur, max))
		}
		add(row{indent: indent, name: name, optional: optional, cur: dash(cur), max: maxStr(max), use: use})
	}

	section("node")
	n := r.Node
	numRow("  ", "kernel.pid_max", "", n.Tasks, n.PidMax)
	numRow("  ", "kernel.threads-max", "", n.Tasks, n.ThreadsMax)

	if len(r.Cgroups) > 0 {
		v := "v1"
		if r.CgroupV2 {
			v = "v2"
		}
		section(fmt.Sprintf("pids cgroups (%s, %s)", v, r.CgroupRoot))
		for _, cg := range r.Cgroups {
			switch cg.Role {
			case RoleRoot:
				add(row{indent: "  ", name: cg.Path, keep: " (root: no pids.max)", cur: dash(cg.Current), max: "-"})
			case RoleQoS:
				numRow("    ", cg.QoS, "", cg.Current, cg.Max)
			case RolePod:
				indent := "      "
				if cg.QoS == "guaranteed" {
					indent = "    "
				}
				numRow(indent, podLabel(cg.Pod), "", cg.Current, cg.Max)
			default:
				numRow("  ", cg.Path, "", cg.Current, cg.Max)
			}
		}
	}
	if len(r.Systemd) > 0 {
		section("systemd TasksMax= (that unit's processes only)")
		for _, u := range r.Systemd {
			max := effStr(u)
			if u.Effective < 0 {
				max = "max"
			}
			add(row{indent: "  ", name: u.Unit, keep: " TasksMax=" + u.TasksMax,
				optional: " (" + path.Base(u.Source) + ")", cur: "-", max: max})
		}
	}
	if len(r.Nproc) > 0 {
		section("nproc, ulimit -u (PAM login sessions only)")
		for _, np := range r.Nproc {
			d := np.Domain
			if d == "*" {
				d = "* (non-root)"
			}
			add(row{indent: "  ", name: d, keep: " " + np.Type, optional: " (" + path.Base(np.Source) + ")",
				cur: "-", max: maxStr(np.Value)})
		}
	}

	// The name column: as wide as the widest row, as the terminal allows.
	nameWidth := utf8.RuneCountInString("LIMIT")
	for _, rw := range rows {
		if !rw.section {
			nameWidth = max(nameWidth, utf8.RuneCountInString(rw.label()))
		}
	}
	nameWidth = min(nameWidth, usable-numbersWidth)
	line := func(name, cur, max, use string) {
		l := fmt.Sprintf("%-*s %9s %10s %5s", nameWidth, name, cur, max, use)
		fmt.Fprintln(bw, strings.TrimRight(l, " "))
	}
	line("LIMIT", "IN USE", "MAX", "USE")
	for _, rw := range rows {
		if rw.section {
			fmt.Fprintln(bw, clip(rw.name, usable))
			continue
		}
		l := rw.fit(nameWidth)
		line(l+strings.Repeat(" ", nameWidth-utf8.RuneCountInString(l)), rw.cur, rw.max, rw.use)
	}

	prose := min(usable, proseWidth-1)
	wrap := func(prefix, text string) { writeWrapped(bw, prefix, text, prose, usable) }

	r.writeThreads(bw, usable)
	fmt.Fprintln(bw)
	for _, f := range r.Findings {
		if f.Severity == Info && strings.HasPrefix(f.ID, "limit-") {
			continue // a row of the table
		}
		wrap("", strings.ToUpper(f.Severity)+" "+f.ID+": "+f.Summary)
		if f.Severity == Info {
			fmt.Fprintln(bw)
			continue
		}
		if len(f.Evidence) > 0 {
			fmt.Fprintln(bw, "  evidence:")
			for _, e := range f.Evidence {
				wrap("    - ", e)
			}
		}
		if f.Fix != "" {
			wrap("  fix: ", f.Fix)
		}
		fmt.Fprintln(bw)
	}
	risks, warnings := r.Count(Risk), r.Count(Warning)
	switch {
	case risks > 0:
		fmt.Fprintf(bw, "%s, %s.\n", plural(risks, "risk"), plural(warnings, "warning"))
	case warnings > 0:
		fmt.Fprintf(bw, "No risk found; %s.\n", plural(warnings, "warning"))
	default:
		fmt.Fprintln(bw, "No risk found.")
	}
	return bw.Flush()
}

// writeWrapped writes text after prefix, wrapped at prose columns,
// continuation lines indented to the prefix's width. A word longer than
// prose (a path) gets a line of its own, whole while the terminal's line
// (usable columns) holds it, else broken after a slash.
func writeWrapped(w io.Writer, prefix, text string, prose, usable int) {
	indent := strings.Repeat(" ", utf8.RuneCountInString(prefix))
	if prefix == "" {
		indent = "  "
	}
	line := prefix
	lineLen := utf8.RuneCountInString(prefix)
	empty := true
	newline := func() {
		fmt.Fprintln(w, line)
		line, lineLen, empty = indent, utf8.RuneCountInString(indent), true
	}
	room := usable - max(utf8.RuneCountInString(indent), utf8.RuneCountInString(prefix))
	for _, word := range strings.Fields(text) {
		pieces := breakWord(word, room)
		for i, piece := range pieces {
			wl := utf8.RuneCountInString(piece)
			if i > 0 || (!empty && lineLen+1+wl > prose) {
				newline()
			}
			if !empty {
				line += " "
				lineLen++
			}
			line += piece
			lineLen += wl
			empty = false
		}
	}
	fmt.Fprintln(w, line)
}

// breakWord cuts a word into pieces of at most n columns, each ending
// after a slash where one is in reach.
func breakWord(word string, n int) []string {
	n = max(n, 1)
	var out []string
	r := []rune(word)
	for len(r) > n {
		cut := n
		for i := n - 1; i > 0; i-- {
			if r[i] == '/' {
				cut = i + 1
				break
			}
		}
		out = append(out, string(r[:cut]))
		r = r[cut:]
	}
	return append(out, string(r))
}

// clip shortens s to n runes by cutting out its middle.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	head := (n - 1) / 2
	tail := n - 1 - head
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

func dash(v int64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// writeThreads writes the largest groups of threads of the pods read:
//
//	threads of the pods with the most tasks
//	  shop/cart-7d9, 1,640 tasks
//	    pool-*-thread-* ×1,580 in java[4121]
func (r *Report) writeThreads(w io.Writer, usable int) {
	var pods []Cgroup
	for _, cg := range r.Cgroups {
		if cg.Threads != nil {
			pods = append(pods, cg)
		}
	}
	if len(pods) == 0 {
		return
	}
	sort.SliceStable(pods, func(i, j int) bool { return pods[i].Current > pods[j].Current })
	fmt.Fprintln(w, "\nthreads of the pods with the most tasks")
	for _, cg := range pods {
		fmt.Fprintf(w, "  %s, %s tasks\n", clip(podLabel(cg.Pod), usable-20), thousands(cg.Current))
		for _, g := range cg.Threads {
			fmt.Fprintln(w, "    "+clip(fmt.Sprintf("%s ×%s in %s[%d]", g.Name, thousands(int64(g.Count)), g.Comm, g.PID), usable-4))
		}
	}
}

// thousands renders 1580 as 1,580.
func thousands(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
