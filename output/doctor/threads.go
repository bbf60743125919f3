package doctor

import (
	"cmp"
	"path/filepath"
	"slices"

	"github.com/forkwatch/forkwatch/output/node/threads"
)

// Doctor shows the groups of threads of the pods with the most tasks: what
// fills a node is usually one pool in one process.
const (
	threadPods   = 3 // pods read
	threadGroups = 5 // groups shown per pod
)

// ThreadGroup is one process's live threads of one folded name (see
// package threads): doctor reads once, so there is no growth.
type ThreadGroup struct {
	Name  string `json:"name"`
	Comm  string `json:"comm"`
	PID   int    `json:"pid"`
	Count int    `json:"count"`
}

// readThreads groups the live threads of the pods with the most tasks,
// from their cgroups' processes and ProcRoot.
func (c *checker) readThreads() {
	var pods []int
	for i, cg := range c.r.Cgroups {
		if cg.Role == RolePod && cg.Current > 0 {
			pods = append(pods, i)
		}
	}
	slices.SortStableFunc(pods, func(a, b int) int { return cmp.Compare(c.r.Cgroups[b].Current, c.r.Cgroups[a].Current) })
	r := threads.Reader{Proc: c.cfg.ProcRoot}
	var rd threads.Reading
	for _, i := range pods[:min(len(pods), threadPods)] {
		cg := &c.r.Cgroups[i]
		rd.Reset()
		if err := r.Cgroup(filepath.Join(c.cfg.CgroupRoot, filepath.FromSlash(cg.Path)), &rd); err != nil {
			c.readError("the threads of "+cg.Path, err)
			continue
		}
		if len(rd.Groups) == 0 {
			continue // its processes exited meanwhile
		}
		threads.Rank(rd.Groups)
		for _, g := range rd.Groups[:min(len(rd.Groups), threadGroups)] {
			cg.Threads = append(cg.Threads, ThreadGroup{Name: g.Name, Comm: g.Comm, PID: g.PID, Count: g.Count})
		}
	}
}
