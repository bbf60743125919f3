package doctor

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
	"unicode/utf8"
)

// Text layout: fits an 80-column terminal.
const (
	textWidth = 79
	nameWidth = 48
)

// WriteText writes the report for a person: a table of the limits and
// their use, then the risks and warnings, each with its evidence and fix.
// Info findings that are rows of the table are not repeated.
func (r *Report) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	row := func(name, cur, max, use string) {
		l := fmt.Sprintf("%-*s %9s %10s %5s", nameWidth, clip(name, nameWidth), cur, max, use)
		fmt.Fprintln(bw, strings.TrimRight(l, " "))
	}
	numRow := func(name string, cur, max int64) {
		use := ""
		if cur >= 0 && max > 0 {
			use = fmt.Sprintf("%d%%", pct(cur, max))
		}
		row(name, dash(cur), maxStr(max), use)
	}
	section := func(title string) { fmt.Fprintln(bw, title) }

	row("LIMIT", "IN USE", "MAX", "USE")
	section("node")
	n := r.Node
	numRow("  kernel.pid_max", n.Tasks, n.PidMax)
	numRow("  kernel.threads-max", n.Tasks, n.ThreadsMax)

	if len(r.Cgroups) > 0 {
		v := "v1"
		if r.CgroupV2 {
			v = "v2"
		}
		section(fmt.Sprintf("pids cgroups (%s, %s)", v, r.CgroupRoot))
		for _, cg := range r.Cgroups {
			var name string
			switch cg.Role {
			case RoleQoS:
				name = "    " + cg.QoS
			case RolePod:
				indent := "      "
				if cg.QoS == "guaranteed" {
					indent = "    "
				}
				name = indent + podLabel(cg.Pod)
			default:
				name = "  " + cg.Path
			}
			if cg.Role == RoleRoot {
				row(name+" (root: no pids.max)", dash(cg.Current), "-", "")
				continue
			}
			numRow(name, cg.Current, cg.Max)
		}
	}
	if len(r.Systemd) > 0 {
		section("systemd TasksMax= (that unit's processes only)")
		for _, u := range r.Systemd {
			max := effStr(u)
			if u.Effective < 0 {
				max = "max"
			}
			row(fmt.Sprintf("  %s=%s (%s)", u.Unit, u.TasksMax, path.Base(u.Source)), "-", max, "")
		}
	}
	if len(r.Nproc) > 0 {
		section("nproc, ulimit -u (PAM login sessions only)")
		for _, np := range r.Nproc {
			d := np.Domain
			if d == "*" {
				d = "* (non-root)"
			}
			row(fmt.Sprintf("  %s %s (%s)", d, np.Type, path.Base(np.Source)), "-", maxStr(np.Value), "")
		}
	}

	fmt.Fprintln(bw)
	for _, f := range r.Findings {
		if f.Severity == Info && strings.HasPrefix(f.ID, "limit-") {
			continue // a row of the table
		}
		writeWrapped(bw, "", strings.ToUpper(f.Severity)+" "+f.ID+": "+f.Summary)
		if f.Severity == Info {
			fmt.Fprintln(bw)
			continue
		}
		if len(f.Evidence) > 0 {
			fmt.Fprintln(bw, "  evidence:")
			for _, e := range f.Evidence {
				writeWrapped(bw, "    - ", e)
			}
		}
		if f.Fix != "" {
			writeWrapped(bw, "  fix: ", f.Fix)
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

// writeWrapped writes text after prefix, wrapped at textWidth, continuation
// lines indented to the prefix's width. Words longer than a line (paths)
// are not broken.
func writeWrapped(w io.Writer, prefix, text string) {
	indent := strings.Repeat(" ", utf8.RuneCountInString(prefix))
	if prefix == "" {
		indent = "  "
	}
	line := prefix
	lineLen := utf8.RuneCountInString(prefix)
	empty := true
	for _, word := range strings.Fields(text) {
		wl := utf8.RuneCountInString(word)
		if !empty && lineLen+1+wl > textWidth {
			fmt.Fprintln(w, line)
			line, lineLen, empty = indent, utf8.RuneCountInString(indent), true
		}
		if !empty {
			line += " "
			lineLen++
		}
		line += word
		lineLen += wl
		empty = false
	}
	fmt.Fprintln(w, line)
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
