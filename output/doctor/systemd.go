package doctor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The units whose TasksMax= is read. systemd turns TasksMax= into the
// pids.max of the unit's own cgroup (/system.slice/<unit>), so it limits the
// tasks of that unit's processes only: kubelet, containerd and its shims,
// dockerd, crio, not the pods (those live under kubepods). calico-node runs
// as a systemd unit on some non-Kubernetes installs.
var checkedUnits = []string{"kubelet.service", "containerd.service", "docker.service", "crio.service"}

// daemonUnits are the units whose small TasksMax= is reported
// (low-tasks-max).
var daemonUnits = checkedUnits

// UnitTasksMax is a unit's TasksMax= as its unit file and drop-ins set it.
// Units that do not set it are not listed: they get DefaultTasksMax= from
// /etc/systemd/system.conf (15% of the system's task limit since systemd
// 239); their cgroup, listed with role "unit", shows the value in force.
type UnitTasksMax struct {
	Unit     string `json:"unit"`
	TasksMax string `json:"tasks_max"` // as written: "4096", "15%", "infinity"
	// Effective is the number of tasks it allows: -1 for infinity; a
	// percentage is of min(pid_max-1, threads-max), as systemd computes
	// it; 0 when it cannot be worked out.
	Effective int64  `json:"effective"`
	Source    string `json:"source"` // file:line of the assignment in force
}

func (c *checker) readSystemd() {
	units := slices.Clone(checkedUnits)
	// calico-node*.service, wherever a unit file or drop-in directory
	// names one.
	seen := map[string]bool{}
	for _, dir := range c.cfg.SystemdDirs {
		matches, _ := filepath.Glob(filepath.Join(dir, "calico-node*.service"))
		dropins, _ := filepath.Glob(filepath.Join(dir, "calico-node*.service.d"))
		for _, m := range append(matches, dropins...) {
			u := strings.TrimSuffix(filepath.Base(m), ".d")
			if !seen[u] {
				seen[u] = true
				units = append(units, u)
			}
		}
	}
	cg, _ := filepath.Glob(filepath.Join(c.cfg.CgroupRoot, "system.slice", "calico-node*.service"))
	for _, m := range cg {
		if u := filepath.Base(m); !seen[u] {
			seen[u] = true
			units = append(units, u)
		}
	}
	sort.Strings(units[len(checkedUnits):])

	for _, u := range units {
		value, source, err := tasksMax(c.cfg.SystemdDirs, u)
		if err != nil {
			c.readError("the unit files of "+u, err)
		} else if source != "" {
			c.r.Systemd = append(c.r.Systemd, UnitTasksMax{
				Unit:      u,
				TasksMax:  value,
				Effective: effectiveTasksMax(value, c.r.Node),
				Source:    source,
			})
		}
		if p, ok := c.unitCgroup(u); ok {
			c.r.Cgroups = append(c.r.Cgroups, Cgroup{Path: p.Path, Role: RoleUnit, Unit: u, Current: p.Current, Max: p.Max})
		}
	}
}

// tasksMax returns the TasksMax= in force for unit according to its files in
// dirs (highest priority first), and where it was set; source is "" when
// nothing sets it.
//
// systemd's rules, as far as they matter here: the unit file is the first
// one found along the search path (one in /etc hides one in /lib); a unit
// file that is a symlink to /dev/null, or empty, is masked. Drop-ins
// <unit>.d/*.conf are collected from every directory, a file name in a
// higher-priority directory hiding the same name further down, and applied
// after the unit file in file name order. Type-wide drop-ins (service.d/,
// systemd 246+) are included, below the unit's own ones of the same name.
// In all of them the last assignment wins, and an empty one ("TasksMax=")
// resets to the default.
func tasksMax(dirs []string, unit string) (value, source string, err error) {
	var main string
	for _, d := range dirs {
		p := filepath.Join(d, unit)
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			if target, _ := os.Readlink(p); target == "/dev/null" {
				return "", "", nil // masked
			}
		}
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			continue
		} else if st.Size() == 0 {
			return "", "", nil // masked
		}
		main = p
		break
	}
	if main == "" {
		return "", "", nil // not installed
	}
	dropins := map[string]string{} // file name → path
	typeDir := unit[strings.LastIndexByte(unit, '.')+1:] + ".d"
	for i := len(dirs) - 1; i >= 0; i-- {
		for _, sub := range []string{typeDir, unit + ".d"} {
			files, _ := filepath.Glob(filepath.Join(dirs[i], sub, "*.conf"))
			for _, f := range files {
				dropins[filepath.Base(f)] = f
			}
		}
	}
	names := make([]string, 0, len(dropins))
	for n := range dropins {
		names = append(names, n)
	}
	sort.Strings(names)
	files := []string{main}
	for _, n := range names {
		files = append(files, dropins[n])
	}
	for _, f := range files {
		v, src, set, err := scanUnitFile(f, "Service", "TasksMax")
		if err != nil {
			return "", "", err
		}
		if set {
			value, source = v, src
			if v == "" {
				source = "" // reset to DefaultTasksMax=
			}
		}
	}
	return value, source, nil
}

// scanUnitFile returns the last value of key in section of a systemd unit
// file and its file:line. Lines ending in a backslash continue on the next.
func scanUnitFile(file, section, key string) (value, source string, set bool, err error) {
	f, err := os.Open(file)
	if err != nil {
		return "", "", false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	cur := ""
	lineNo, startLine := 0, 0
	var pending strings.Builder
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if pending.Len() == 0 {
			startLine = lineNo
			if line == "" || line[0] == '#' || line[0] == ';' {
				continue
			}
		} else if line != "" && (line[0] == '#' || line[0] == ';') {
			continue // comments inside a continuation are skipped
		}
		if strings.HasSuffix(line, `\`) {
			pending.WriteString(strings.TrimSuffix(line, `\`))
			pending.WriteByte(' ')
			continue
		}
		pending.WriteString(line)
		l := pending.String()
		pending.Reset()
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			cur = l[1 : len(l)-1]
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || cur != section || strings.TrimSpace(k) != key {
			continue
		}
		value, set = strings.TrimSpace(v), true
		source = fmt.Sprintf("%s:%d", file, startLine)
	}
	return value, source, set, sc.Err()
}

// effectiveTasksMax turns a TasksMax= value into a number of tasks: -1 for
// infinity, 0 when unknown. A percentage (or permille) is of the system's
// task limit, which systemd takes as the smallest of pid_max-1 (PID 0 is
// never handed out) and threads-max: 15% on a node with pid_max 32768 is
// 4915.
func effectiveTasksMax(v string, n Node) int64 {
	if v == "infinity" {
		return -1
	}
	scale := 0.0
	switch {
	case strings.HasSuffix(v, "%"):
		v, scale = strings.TrimSuffix(v, "%"), 100
	case strings.HasSuffix(v, "‰"):
		v, scale = strings.TrimSuffix(v, "‰"), 1000
	}
	if scale == 0 {
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil || x < 0 {
			return 0
		}
		return x
	}
	pct, err := strconv.ParseFloat(v, 64)
	sys := systemTasksMax(n)
	if err != nil || pct < 0 || sys <= 0 {
		return 0
	}
	return int64(float64(sys) * pct / scale)
}

// systemTasksMax is systemd's idea of the most tasks the system can have,
// or -1 if neither limit is known.
func systemTasksMax(n Node) int64 {
	m := int64(-1)
	if n.PidMax > 0 {
		m = n.PidMax - 1
	}
	if n.ThreadsMax > 0 && (m < 0 || n.ThreadsMax < m) {
		m = n.ThreadsMax
	}
	return m
}
