package tracer

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TaskCounts are successful task creations and exits in one cgroup (or,
// summed, in a pod or container), cumulative since forkwatch started.
type TaskCounts struct {
	ThreadsCreated, ProcessesCreated uint64
	ThreadsExited, ProcessesExited   uint64
}

// Add adds o's counts to c.
func (c *TaskCounts) Add(o TaskCounts) {
	c.ThreadsCreated += o.ThreadsCreated
	c.ProcessesCreated += o.ProcessesCreated
	c.ThreadsExited += o.ThreadsExited
	c.ProcessesExited += o.ProcessesExited
}

// Created is how many tasks were created, threads and processes.
func (c TaskCounts) Created() uint64 { return c.ThreadsCreated + c.ProcessesCreated }

// Exited is how many tasks exited, threads and processes.
func (c TaskCounts) Exited() uint64 { return c.ThreadsExited + c.ProcessesExited }

// add adds counts in the kernel's layout (structs.HostLayout sets them
// apart from TaskCounts).
func (c *TaskCounts) add(p forkwatchTaskCounts) {
	c.Add(TaskCounts{p.ThreadsCreated, p.ProcessesCreated, p.ThreadsExited, p.ProcessesExited})
}

// countReader holds what reading the counters reuses: every CPU's slot
// cache is 14 KiB, read twice per sample and per scrape.
type countReader struct {
	mu        sync.Mutex
	buf       []forkwatchCountCache // one per possible CPU
	evictions []uint64
}

// TaskCounts returns the counts of every cgroup the kernel has seen a task
// created or exit in, by cgroup id: counts_by_cgroup plus what each CPU's
// slot cache holds. A slot evicted while the two are read would be counted
// twice or not at all, so the caches' eviction counts are read before the
// hash and compared after it with the caches that are added, and the read
// is repeated when any CPU evicted in between.
func (t *Tracer) TaskCounts() (map[uint64]TaskCounts, error) {
	r := &t.counts
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := t.readCountCaches(); err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		r.evictions = r.evictions[:0]
		for i := range r.buf {
			r.evictions = append(r.evictions, r.buf[i].Evictions)
		}
		out, err := t.hashCounts()
		if err != nil {
			return nil, err
		}
		if err := t.readCountCaches(); err != nil {
			return nil, err
		}
		if try == 4 || r.sameEvictions() {
			// After five tries (slots turning over faster than a read),
			// the last read stands: off by at most the evicted slots'
			// counts, for one sample.
			r.addCached(out)
			return out, nil
		}
	}
}

func (t *Tracer) hashCounts() (map[uint64]TaskCounts, error) {
	out := make(map[uint64]TaskCounts)
	var (
		key    uint64
		perCPU []forkwatchTaskCounts
	)
	it := t.maps.CountsByCgroup.Iterate()
	for it.Next(&key, &perCPU) {
		var c TaskCounts
		for _, p := range perCPU {
			c.add(p)
		}
		out[key] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading task counters: %w", err)
	}
	return out, nil
}

// readCountCaches reads every CPU's slot cache into t.counts.buf, with one
// bpf(2) call into a reused buffer (the library's per-CPU lookup decodes
// into fresh memory each time). Kernels whose counters run without BTF
// leave the caches empty.
func (t *Tracer) readCountCaches() error {
	r := &t.counts
	if r.buf == nil {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return fmt.Errorf("reading task counter caches: %w", err)
		}
		r.buf = make([]forkwatchCountCache, n)
	}
	// Per-CPU values come back 8-byte aligned, one after the other; a
	// count_cache is a multiple of 8 bytes, so they are a Go slice of it.
	key := uint32(0)
	attr := struct {
		mapFD uint32
		_     uint32
		key   uint64
		value uint64
		flags uint64
	}{
		mapFD: uint32(t.maps.CountSlots.FD()),
		key:   uint64(uintptr(unsafe.Pointer(&key))),
		value: uint64(uintptr(unsafe.Pointer(&r.buf[0]))),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_LOOKUP_ELEM, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return fmt.Errorf("reading task counter caches: %w", errno)
	}
	return nil
}

func (r *countReader) sameEvictions() bool {
	for i := range r.buf {
		if r.evictions[i] != r.buf[i].Evictions {
			return false
		}
	}
	return true
}

func (r *countReader) addCached(out map[uint64]TaskCounts) {
	for i := range r.buf {
		for _, s := range r.buf[i].Slot {
			if s.CgroupId == 0 {
				continue
			}
			c := out[s.CgroupId]
			c.add(s.C)
			out[s.CgroupId] = c
		}
	}
}

// Values of the BPF side's pids_hierarchy.
const (
	pidsUnknown uint8 = 0
	pidsV1      uint8 = 1
	pidsDfl     uint8 = 2
)

// pidsHierarchy tells the counters where the pids controller is, from
// /proc/cgroups ("pids <hierarchy> <cgroups> <enabled>"): hierarchy 0 is the
// default (v2) one, any other a v1 hierarchy of its own. When the file says
// nothing usable the BPF side compares hierarchies per task.
func pidsHierarchy(path string) uint8 {
	b, err := os.ReadFile(path)
	if err != nil {
		return pidsUnknown
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "pids" {
			continue
		}
		switch {
		case f[3] != "1":
			return pidsUnknown
		case f[1] == "0":
			return pidsDfl
		default:
			return pidsV1
		}
	}
	return pidsUnknown
}
