// Package doctor checks a node's PID and thread limits before they bite:
// it reads them all (kernel sysctls, the pids cgroups from the root down to
// each pod, systemd TasksMax= of the node's daemons, nproc from
// limits.conf), and reports the combinations that took nodes down in the
// incidents forkwatch exists for (see DESIGN.md): a kubepods limit left
// stale after pid_max changed, pod limits that add up to more than the node
// has, a limit already 80% used, pods nothing limits, and the ulimit/TasksMax
// values that look alarming but only apply to one user or unit.
//
// Everything is read from files below configurable roots, so tests (and a
// copy of a node's /proc, /sys/fs/cgroup and /etc) can be checked the same
// way as the live node. Nothing is executed.
package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/limits"
)

// Config says where to read everything from.
type Config struct {
	ProcRoot   string // "/proc"
	CgroupRoot string // mount of the hierarchy holding the pids controller
	CgroupV2   bool
	// Kubepods is the kubepods cgroup relative to CgroupRoot; "" finds
	// "/kubepods" (kubelet's cgroupfs driver) or "/kubepods.slice" (systemd
	// driver). Kubelet's --cgroup-root can put it elsewhere.
	Kubepods    string
	PodLogsDir  string   // "/var/log/pods": <namespace>_<name>_<uid>/ per pod
	SystemdDirs []string // unit search path, highest priority first
	LimitsConf  string   // "/etc/security/limits.conf"
	LimitsDir   string   // "/etc/security/limits.d"
}

// DefaultConfig returns the paths of a real node, with the pids hierarchy
// detected as forkwatch detects it.
func DefaultConfig() Config {
	root, err := node.DetectCgroupRoot("")
	if err != nil {
		root = node.CgroupRoot{Path: "/sys/fs/cgroup"} // Validate says what is wrong
	}
	return Config{
		ProcRoot:   "/proc",
		CgroupRoot: root.Path,
		CgroupV2:   root.V2,
		PodLogsDir: "/var/log/pods",
		// systemd's unit search path, highest priority first: a unit file
		// in /etc masks one of the same name in /run or /lib, and a drop-in
		// in /etc masks a drop-in of the same file name further down.
		SystemdDirs: []string{"/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"},
		LimitsConf:  "/etc/security/limits.conf",
		LimitsDir:   "/etc/security/limits.d",
	}
}

// Validate reports configuration a check cannot run with: the caller's bad
// input, not a finding about the node. Messages name the forkwatch doctor
// flag that sets the value.
func (c Config) Validate() error {
	if _, err := os.Stat(filepath.Join(c.ProcRoot, "sys/kernel/pid_max")); err != nil {
		return fmt.Errorf("%s has no sys/kernel/pid_max: not a proc filesystem (--proc-root)", c.ProcRoot)
	}
	fi, err := os.Stat(c.CgroupRoot)
	if err != nil {
		return fmt.Errorf("cgroup root %s does not exist (--cgroup-root)", c.CgroupRoot)
	}
	if !fi.IsDir() {
		return fmt.Errorf("cgroup root %s is not a directory (--cgroup-root)", c.CgroupRoot)
	}
	if c.Kubepods != "" {
		rel := limits.CleanPath(c.Kubepods)
		if rel == "/" {
			return fmt.Errorf("kubepods cgroup %q must be below the root of the hierarchy (--kubepods)", c.Kubepods)
		}
		if fi, err := os.Stat(filepath.Join(c.CgroupRoot, rel)); err != nil || !fi.IsDir() {
			return fmt.Errorf("kubepods cgroup %s: no such cgroup under %s (--kubepods)", rel, c.CgroupRoot)
		}
	}
	return nil
}

// Severities, most severe first.
const (
	Risk    = "risk"    // this limit can (or did) refuse forks of pods or node daemons
	Warning = "warning" // worth fixing, but not what takes the node down
	Info    = "info"    // a limit as read
)

// Report is what Check found. Its JSON form is forkwatch doctor -o json.
type Report struct {
	Node       Node   `json:"node"`
	CgroupRoot string `json:"cgroup_root"`
	CgroupV2   bool   `json:"cgroup_v2"`
	Kubepods   string `json:"kubepods"` // "" when there is no kubepods cgroup
	// Cgroups: the root, the cgroups between it and kubepods, kubepods,
	// its QoS classes and pods (parents before children), then the
	// cgroups of the systemd units checked, where they exist.
	Cgroups  []Cgroup       `json:"cgroups"`
	Systemd  []UnitTasksMax `json:"systemd"`
	Nproc    []Nproc        `json:"nproc"`
	Findings []Finding      `json:"findings"` // risks, then warnings, then info
}

// Node is the node-wide limits; -1 when they could not be read.
type Node struct {
	PidMax     int64 `json:"pid_max"`
	ThreadsMax int64 `json:"threads_max"`
	Tasks      int64 `json:"tasks"`
}

// Roles of the cgroups in a report.
const (
	RoleRoot     = "root"
	RoleAncestor = "ancestor" // between the root and kubepods
	RoleKubepods = "kubepods"
	RoleQoS      = "qos"
	RolePod      = "pod"
	RoleUnit     = "unit" // a systemd unit's cgroup, e.g. /system.slice/kubelet.service
)

// Cgroup is one pids cgroup.
type Cgroup struct {
	Path    string `json:"path"` // relative to the hierarchy root
	Role    string `json:"role"`
	QoS     string `json:"qos,omitempty"` // guaranteed, burstable, besteffort (qos and pod roles)
	Pod     *Pod   `json:"pod,omitempty"`
	Unit    string `json:"unit,omitempty"`
	Current int64  `json:"current"` // -1: unknown (the v1 root has no pids.current)
	Max     int64  `json:"max"`     // -1: unlimited ("max")
	// Threads: for the pods with the most tasks, their largest groups of
	// live threads.
	Threads []ThreadGroup `json:"threads,omitempty"`
}

// Pod names a pod, as the watcher does; Namespace and Name are empty when
// no pod log directory carried its UID.
type Pod = kube.Pod

// Finding is one thing the doctor has to say.
type Finding struct {
	Severity string   `json:"severity"`
	ID       string   `json:"id"`
	Summary  string   `json:"summary"`
	Evidence []string `json:"evidence,omitempty"`
	Fix      string   `json:"fix,omitempty"`
}

// HasRisk reports whether any finding is a risk.
func (r *Report) HasRisk() bool {
	return slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.Severity == Risk })
}

// Count returns how many findings have the severity.
func (r *Report) Count(severity string) int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == severity {
			n++
		}
	}
	return n
}

// Check reads every limit and returns them with the findings. What cannot
// be read becomes a "read-error" warning; Check itself never fails.
func Check(cfg Config) Report {
	c := &checker{cfg: cfg, r: Report{
		CgroupRoot: cfg.CgroupRoot,
		CgroupV2:   cfg.CgroupV2,
		Cgroups:    []Cgroup{},
		Systemd:    []UnitTasksMax{},
		Nproc:      []Nproc{},
		Findings:   []Finding{},
	}}
	c.readNode()
	c.readCgroups()
	c.readThreads()
	c.readSystemd()
	c.readNproc()
	c.findings()
	rank := map[string]int{Risk: 0, Warning: 1, Info: 2}
	sort.SliceStable(c.r.Findings, func(i, j int) bool {
		return rank[c.r.Findings[i].Severity] < rank[c.r.Findings[j].Severity]
	})
	return c.r
}

type checker struct {
	cfg Config
	r   Report
}

func (c *checker) add(f Finding) { c.r.Findings = append(c.r.Findings, f) }

func (c *checker) readError(what string, err error) {
	c.add(Finding{
		Severity: Warning,
		ID:       "read-error",
		Summary:  "could not read " + what + "; the checks that need it were skipped",
		Evidence: []string{err.Error()},
	})
}

func (c *checker) procFile(name string) string { return filepath.Join(c.cfg.ProcRoot, name) }

func (c *checker) readNode() {
	n, err := limits.ReadNode(c.cfg.ProcRoot)
	if err == nil {
		c.r.Node = Node{PidMax: n.PidMax, ThreadsMax: n.ThreadsMax, Tasks: n.Tasks}
		return
	}
	// Keep whatever can be read on its own.
	c.readError("the node's limits", err)
	c.r.Node = Node{PidMax: -1, ThreadsMax: -1, Tasks: -1}
	if v, err := limits.ReadInt(c.procFile("sys/kernel/pid_max")); err == nil {
		c.r.Node.PidMax = v
	}
	if v, err := limits.ReadInt(c.procFile("sys/kernel/threads-max")); err == nil {
		c.r.Node.ThreadsMax = v
	}
}

// readCgroups fills in the pids cgroups from the root down to each pod.
func (c *checker) readCgroups() {
	root := c.cfg.CgroupRoot
	top, err := limits.ReadPids(root, "/")
	if err != nil {
		c.readError("the pids cgroup hierarchy at "+root, err)
		return
	}
	c.r.Cgroups = append(c.r.Cgroups, Cgroup{Path: "/", Role: RoleRoot, Current: top.Current, Max: top.Max})

	kp := c.cfg.Kubepods
	if kp == "" {
		for _, cand := range []string{"/kubepods", "/kubepods.slice"} {
			if fi, err := os.Stat(filepath.Join(root, cand)); err == nil && fi.IsDir() {
				kp = cand
				break
			}
		}
	}
	if kp == "" {
		c.add(Finding{
			Severity: Info,
			ID:       "no-kubepods",
			Summary:  "no kubepods cgroup under " + root + ": pod checks skipped (not a kubelet node, or kubelet's --cgroup-root puts it elsewhere: --kubepods)",
			Evidence: []string{"looked for " + filepath.Join(root, "kubepods") + " and " + filepath.Join(root, "kubepods.slice")},
		})
		return
	}
	kp = limits.CleanPath(kp)
	c.r.Kubepods = kp

	// The cgroups between the root and kubepods (a kubelet --cgroup-root,
	// or a test's own subtree) can hold a limit of their own.
	anc, err := limits.Ancestors(root, path.Dir(kp))
	if err != nil {
		c.readError("the cgroups above "+kp, err)
	}
	for i := len(anc) - 1; i >= 0; i-- {
		c.r.Cgroups = append(c.r.Cgroups, Cgroup{Path: anc[i].Path, Role: RoleAncestor, Current: anc[i].Current, Max: anc[i].Max})
	}

	// kubepods, QoS classes and pods are at most two levels below kubepods:
	//   cgroupfs driver: /kubepods/pod<uid> (Guaranteed),
	//                    /kubepods/{burstable,besteffort}/pod<uid>
	//   systemd driver:  /kubepods.slice/kubepods-pod<uid_>.slice,
	//                    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice
	// Depth 2 also reaches the containers of Guaranteed pods; those are
	// dropped below.
	tree, err := limits.Tree(filepath.Join(root, filepath.FromSlash(kp)), 2)
	if err != nil {
		c.readError("the kubepods cgroup "+kp, err)
		return
	}
	// Pods are named the way the watcher names them: kube's parsers.
	pods, _ := kube.NewPodDirectory(c.cfg.PodLogsDir) // none: pods named by UID
	for _, p := range tree {
		full := path.Join(kp, p.Path)
		cg := Cgroup{Path: full, Current: p.Current, Max: p.Max}
		if p.Path == "/" {
			cg.Role = RoleKubepods
			c.r.Cgroups = append(c.r.Cgroups, cg)
			continue
		}
		if q := kube.QoSClass(full); q != "" {
			cg.Role, cg.QoS = RoleQoS, q
			c.r.Cgroups = append(c.r.Cgroups, cg)
			continue
		}
		info := kube.ParseCgroupPath(full)
		if info.PodUID == "" || info.PodCgroup != full {
			continue // a container, or something kubelet did not make
		}
		cg.Role, cg.QoS = RolePod, info.QoS
		pod := kube.Pod{UID: info.PodUID}
		if pods != nil {
			if named, ok := pods.Lookup(info.PodUID); ok {
				pod = named
			}
		}
		cg.Pod = &pod
		c.r.Cgroups = append(c.r.Cgroups, cg)
	}
}

// unitCgroup reads the cgroup systemd made for a unit, if there is one.
// systemd applies TasksMax= by writing that cgroup's pids.max, so this is
// the value in force, whatever the unit files say now (they may have been
// edited without systemctl daemon-reload).
func (c *checker) unitCgroup(unit string) (limits.Pids, bool) {
	for _, slice := range []string{"/system.slice/", "/"} {
		p, err := limits.ReadPids(c.cfg.CgroupRoot, slice+unit)
		if err == nil {
			return p, true
		}
	}
	return limits.Pids{}, false
}

func (c *checker) cgroupFile(rel, name string) string {
	return filepath.Join(c.cfg.CgroupRoot, filepath.FromSlash(rel), name)
}

// kubepodsCgroup returns the kubepods cgroup of the report.
func (r *Report) kubepodsCgroup() (Cgroup, bool) {
	for _, cg := range r.Cgroups {
		if cg.Role == RoleKubepods {
			return cg, true
		}
	}
	return Cgroup{}, false
}

func (r *Report) pods() []Cgroup {
	var out []Cgroup
	for _, cg := range r.Cgroups {
		if cg.Role == RolePod {
			out = append(out, cg)
		}
	}
	return out
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
