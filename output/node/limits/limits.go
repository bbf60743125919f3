// Package limits reads the limits that decide whether a fork/clone on this
// node gets a new task, and how much of each is in use:
//
//   - kernel.pid_max: the highest PID the kernel hands out (+1). Every task
//     (process or thread) holds one PID in each PID namespace it is visible
//     in, so on the host the node cannot have more than pid_max-1 tasks
//     (PID 0 is never allocated).
//   - kernel.threads-max: the kernel's cap on the number of tasks, derived at
//     boot from RAM, settable by sysctl.
//   - the pids cgroup controller: pids.max in every cgroup on a task's path.
//     A fork charges the new task to the caller's cgroup and to every
//     ancestor, and fails with EAGAIN at the first one where the count would
//     exceed pids.max. The cgroup that refused is therefore often an ancestor
//     (/kubepods) of the one dmesg names (the container's).
//
// Everything is a plain read of a small file in /proc or cgroupfs: no
// fork/exec (the caller may be running while the node is out of PIDs) and
// cheap enough to call every second.
package limits

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// Node is the node-wide picture.
type Node struct {
	PidMax     int64 // /proc/sys/kernel/pid_max
	ThreadsMax int64 // /proc/sys/kernel/threads-max
	Tasks      int64 // tasks (threads) on the node now: the 4th field of /proc/loadavg is "running/total", total = nr_threads
}

// ReadNode reads pid_max, threads-max and the number of tasks below procRoot
// (normally "/proc"; tests pass a directory holding sys/kernel/pid_max,
// sys/kernel/threads-max and loadavg).
//
// The task count comes from /proc/loadavg, not from listing /proc: the
// kernel prints nr_threads() there, the number of tasks on the whole node
// (all PID namespaces), in one small read. Inside a PID namespace the number
// is still the host's. (sysinfo(2)'s procs field is a u16 and wraps at
// 65536, which is why kubelet reads loadavg too.)
func ReadNode(procRoot string) (Node, error) {
	var n Node
	var err error
	if n.PidMax, err = ReadInt(filepath.Join(procRoot, "sys/kernel/pid_max")); err != nil {
		return Node{}, err
	}
	if n.ThreadsMax, err = ReadInt(filepath.Join(procRoot, "sys/kernel/threads-max")); err != nil {
		return Node{}, err
	}
	loadavg := filepath.Join(procRoot, "loadavg")
	b, err := os.ReadFile(loadavg)
	if err != nil {
		return Node{}, err
	}
	// "0.52 0.58 0.59 3/812 12345": the 4th field is running/total.
	f := bytes.Fields(b)
	if len(f) < 4 {
		return Node{}, fmt.Errorf("%s: want at least 4 fields, got %q", loadavg, bytes.TrimSpace(b))
	}
	_, total, ok := bytes.Cut(f[3], []byte("/"))
	if !ok {
		return Node{}, fmt.Errorf("%s: 4th field %q is not running/total", loadavg, f[3])
	}
	if n.Tasks, err = strconv.ParseInt(string(total), 10, 64); err != nil {
		return Node{}, fmt.Errorf("%s: 4th field %q: %w", loadavg, f[3], err)
	}
	return n, nil
}

// Pids is one cgroup's pids controller state.
type Pids struct {
	Path    string // relative to the hierarchy root, "/" for the root, e.g. "/kubepods/burstable"
	Current int64  // pids.current (for the root of a v1 hierarchy, which has no pids.current: -1)
	Max     int64  // pids.max; "max" (unlimited) is -1
}

// Unlimited reports whether the cgroup itself sets no limit.
func (p Pids) Unlimited() bool { return p.Max < 0 }

// ErrNoPidsFiles is returned (wrapped) by ReadPids for a cgroup below the root
// that has no pids.current/pids.max: on cgroup v2 a cgroup only has them when
// its parent lists "pids" in cgroup.subtree_control.
var ErrNoPidsFiles = errors.New("no pids controller files")

// ReadPids reads pids.current and pids.max of the cgroup at rel below root (the mount of the hierarchy holding the pids controller, e.g. /sys/fs/cgroup/pids on v1, /sys/fs/cgroup on v2).
//
// The root cgroup never has pids.max (the kernel creates it only on
// non-root cgroups: the root cannot be limited) and, on v1 and older v2
// kernels, no pids.current either; missing files there read as -1. Below
// the root, a cgroup without the files is an error wrapping ErrNoPidsFiles,
// and a cgroup that does not exist (a pod that just went away) one wrapping
// fs.ErrNotExist.
func ReadPids(root, rel string) (Pids, error) {
	rel = CleanPath(rel)
	dir := filepath.Join(root, filepath.FromSlash(rel))
	p := Pids{Path: rel, Current: -1, Max: -1}
	isRoot := rel == "/"
	cur, err := ReadInt(filepath.Join(dir, "pids.current"))
	switch {
	case err == nil:
		p.Current = cur
	case errors.Is(err, fs.ErrNotExist) && isRoot:
	case errors.Is(err, fs.ErrNotExist):
		// Only now tell "gone" from "no controller here", so the usual
		// case costs two reads and nothing else.
		if _, err := os.Stat(dir); err != nil {
			return Pids{}, err
		}
		return Pids{}, fmt.Errorf("cgroup %s under %s: %w", rel, root, ErrNoPidsFiles)
	default:
		return Pids{}, err
	}
	maxFile := filepath.Join(dir, "pids.max")
	b, err := readSmall(maxFile)
	switch {
	case err == nil:
		if p.Max, err = parseMax(b); err != nil {
			return Pids{}, fmt.Errorf("%s: %w", maxFile, err)
		}
	case errors.Is(err, fs.ErrNotExist) && isRoot:
	case errors.Is(err, fs.ErrNotExist):
		return Pids{}, fmt.Errorf("cgroup %s under %s: %w", rel, root, ErrNoPidsFiles)
	default:
		return Pids{}, err
	}
	return p, nil
}

// Ancestors returns Pids for rel and each of its ancestors up to (excluding) the root, leaf first, skipping cgroups without pids files (v2 subtrees where the controller is not enabled).
//
// This is the path a fork is charged along: the kernel's pids_try_charge()
// walks from the task's cgroup up to (not including) the root and refuses
// at the first cgroup whose count would exceed its pids.max.
func Ancestors(root, rel string) ([]Pids, error) {
	return (&Reader{Root: root}).Ancestors(rel)
}

// Reader reads the pids files of the cgroups of one hierarchy, each cgroup
// at most once: a sampler naming 500 pods reads /kubepods once, not 500
// times. Set hands it a value read earlier. The zero value with Root set is
// ready; it is not safe for concurrent use.
type Reader struct {
	Root string
	memo map[string]readResult
}

type readResult struct {
	p   Pids
	err error
}

// Read is ReadPids(r.Root, rel), remembered.
func (r *Reader) Read(rel string) (Pids, error) {
	rel = CleanPath(rel)
	if res, ok := r.memo[rel]; ok {
		return res.p, res.err
	}
	p, err := ReadPids(r.Root, rel)
	r.Set(rel, p, err)
	return p, err
}

// Set makes Read return p and err for rel without reading.
func (r *Reader) Set(rel string, p Pids, err error) {
	if r.memo == nil {
		r.memo = map[string]readResult{}
	}
	r.memo[CleanPath(rel)] = readResult{p, err}
}

// Ancestors is the package's Ancestors through r.
func (r *Reader) Ancestors(rel string) ([]Pids, error) {
	rel = CleanPath(rel)
	var out []Pids
	for p := rel; p != "/"; p = path.Dir(p) {
		ps, err := r.Read(p)
		if errors.Is(err, ErrNoPidsFiles) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ps)
	}
	return out, nil
}

// Nearest returns, of the given cgroups, the one with the least headroom (Max-Current), ignoring unlimited ones; ok=false if all unlimited.
//
// On a tie the earlier one wins: given Ancestors' leaf-first order, that is
// the cgroup the kernel would name, since it checks the leaf first.
// A limited cgroup whose current count is unknown is treated as having
// its whole limit as headroom.
func Nearest(ps []Pids) (Pids, bool) {
	var best Pids
	var bestRoom int64
	found := false
	for _, p := range ps {
		if p.Unlimited() {
			continue
		}
		room := p.Max
		if p.Current >= 0 {
			room = p.Max - p.Current
		}
		if !found || room < bestRoom {
			best, bestRoom, found = p, room, true
		}
	}
	return best, found
}

// Tree walks the hierarchy from root and returns every cgroup that has pids files, up to maxDepth levels below root (kubepods/qos/pod is depth 3; use it to get root, kubepods, QoS classes and pods without descending into every container), root first, parents before children.
//
// The root is always returned (see ReadPids for what it holds). Siblings
// come in name order. A cgroup without pids files is returned with none of
// its descendants: on v2 a child can only have the controller if its parent
// has it. Cgroups removed while the walk runs (pods come and go) are
// skipped, not errors.
func Tree(root string, maxDepth int) ([]Pids, error) {
	if fi, err := os.Stat(root); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", root)
	}
	top, err := ReadPids(root, "/")
	if err != nil {
		return nil, err
	}
	out := []Pids{top}
	var walk func(rel string, depth int) error
	walk = func(rel string, depth int) error {
		if depth >= maxDepth {
			return nil
		}
		entries, err := os.ReadDir(filepath.Join(root, filepath.FromSlash(rel)))
		if errors.Is(err, fs.ErrNotExist) && rel != "/" {
			return nil
		}
		if err != nil {
			return err
		}
		// os.ReadDir sorts by name already; keep it explicit, the order is
		// part of the contract.
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			child := path.Join(rel, e.Name())
			p, err := ReadPids(root, child)
			if errors.Is(err, ErrNoPidsFiles) || errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, p)
			if err := walk(child, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk("/", 0); err != nil {
		return nil, err
	}
	return out, nil
}

// CleanPath turns "", "a/b", "/a/b/" into "/", "/a/b", "/a/b": a cgroup
// path relative to the hierarchy's root, as forkwatch writes them.
func CleanPath(rel string) string {
	return path.Clean("/" + filepath.ToSlash(rel))
}

// parseMax parses a pids.max: a number, or "max" for no limit (-1).
func parseMax(b []byte) (int64, error) {
	s := string(bytes.TrimSpace(b))
	if s == "max" {
		return -1, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want a number or \"max\", got %q", s)
	}
	return n, nil
}

// ReadInt reads a file holding one integer (a sysctl, pids.current).
func ReadInt(file string) (int64, error) {
	b, err := readSmall(file)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: want a number, got %q", file, bytes.TrimSpace(b))
	}
	return n, nil
}

// readSmall reads a cgroup control file of a line: open, one read, close,
// without os.File's registration with the poller (cgroup files are read
// for every pod every second).
func readSmall(file string) ([]byte, error) {
	fd, err := unix.Open(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: file, Err: err}
	}
	defer unix.Close(fd)
	var buf [64]byte
	n, err := unix.Read(fd, buf[:])
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: file, Err: err}
	}
	return buf[:n], nil
}
