package node

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/tracer"
)

// Unseen is a count of forks the pids controller refused in a cgroup that
// no failure record reported: refused while the failure hooks were
// detached (tracer.HooksPressure), counted from the kernel's own refusal
// counts (pids.events).
type Unseen struct {
	Time time.Time `json:"time"`
	// Cgroup is where the kernel counted them: the forking task's cgroup,
	// or the refusing one where the kernel counts there (cgroup v2, 6.12+).
	Cgroup string `json:"cgroup"`
	Count  uint64 `json:"count"`
	// LimitCgroup is the cgroup whose pids.max refused: Cgroup itself or
	// its nearest ancestor with a limit ("" if none has one now).
	LimitCgroup string `json:"limit_cgroup,omitempty"`
	Who
}

// RefusalLedger finds the refusals the kernel counted that no failure
// record reported. Walk reads every cgroup's refusal count and compares its
// growth since the last walk with the failures the reader saw (Seen) in
// between; call it when no refusal can be in flight: the hooks detached, or
// attached and no failure read, for long enough to drain the ring buffer.
type RefusalLedger struct {
	root, file string
	inLimit    bool
	attr       *Attributor

	mu   sync.Mutex
	seen map[string]uint64 // failures reported per counting cgroup since the last walk
	base map[string]uint64 // counts at the last walk
}

// NewRefusalLedger returns a ledger of the pids hierarchy mounted at root,
// whose cgroups keep their refusal counts in file (see
// tracer.Tracer.RefusalCounts); nil where the kernel keeps none.
func NewRefusalLedger(root, file string, inRefusingCgroup bool, attr *Attributor) *RefusalLedger {
	if file == "" {
		return nil
	}
	return &RefusalLedger{root: root, file: file, inLimit: inRefusingCgroup, attr: attr, seen: map[string]uint64{}}
}

// Seen notes a failure the reader reported.
func (l *RefusalLedger) Seen(f *tracer.Failure) {
	if l == nil || f.Cause != tracer.CausePidsCgroup {
		return
	}
	key := f.Cgroup
	if l.inLimit && f.Limit != nil {
		key = f.Limit.Cgroup
	}
	l.mu.Lock()
	l.seen[key]++
	l.mu.Unlock()
}

// Walk returns the refusals counted since the last walk that no failure
// record reported, by cgroup (the first walk only takes the counts), and
// the cgroup whose pids.max is nearest to running out among those within
// reach (see tracer.PressurePercent), if any: a limit set or lowered close
// to a cgroup's tasks, which no task creation revealed.
func (l *RefusalLedger) Walk(now time.Time) ([]Unseen, *limits.Pids, error) {
	if l == nil {
		return nil, nil, nil
	}
	var near *limits.Pids
	counts := map[string]uint64{}
	err := filepath.WalkDir(l.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		rel := l.rel(path)
		if n := tracer.ReadRefusalCount(filepath.Join(path, l.file)); n > 0 {
			counts[rel] = n
		}
		// An empty cgroup refuses nothing until a task arrives, which the
		// counters see.
		if p, err := limits.ReadPids(l.root, rel); err == nil && p.Max >= 0 && p.Current > 0 &&
			p.Max-p.Current < max(p.Max/100*tracer.PressurePercent, tracer.PressureMin) &&
			(near == nil || p.Max-p.Current < near.Max-near.Current) {
			near = &p
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	l.mu.Lock()
	seen := l.seen
	l.seen = map[string]uint64{}
	l.mu.Unlock()
	first := l.base == nil
	base := l.base
	l.base = counts
	if first {
		return nil, near, nil
	}
	var out []Unseen
	for cg, n := range counts {
		grew := n - min(base[cg], n) // a cgroup recreated under the same name starts again
		if grew <= seen[cg] {
			continue
		}
		u := Unseen{Time: now, Cgroup: cg, Count: grew - seen[cg], LimitCgroup: l.limitOf(cg), Who: l.attr.Resolve(cg)}
		out = append(out, u)
	}
	return out, near, nil
}

// rel turns a directory of the hierarchy into a cgroup path ("/a/b").
func (l *RefusalLedger) rel(dir string) string {
	r := strings.TrimPrefix(dir, l.root)
	if r == "" {
		return "/"
	}
	return r
}

// limitOf returns cg or its nearest ancestor with a pids.max.
func (l *RefusalLedger) limitOf(cg string) string {
	if l.inLimit {
		return cg
	}
	for p := cg; p != "/" && p != "."; p = filepath.Dir(p) {
		b, err := os.ReadFile(filepath.Join(l.root, p, "pids.max"))
		if err == nil && strings.TrimSpace(string(b)) != "max" {
			return p
		}
	}
	return ""
}
