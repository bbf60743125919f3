package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// rss runs forkwatch for --rss-minutes with --rss-cgroups pod cgroups on the
// node, a short-lived process in one of them every 100 ms (each sees one
// every ~50 s), and its metrics scraped every 5 s, and reads its peak
// memory: VmHWM, and how much of it is anonymous (heap, stacks) and how much
// file-backed (the binary's text, shared and reclaimable; the ring buffer,
// whose pages user space maps twice). forkwatch runs in a memory cgroup of
// its own, whose peak charge is what a memory limit (a DaemonSet's
// limits.memory) would see: anonymous memory and kernel memory (BPF maps,
// page tables), counted once. It also reports forkwatch's CPU over the run.
func rss(ctx context.Context, e *env, t *table) error {
	cgs, err := e.manyPods(*rssCgroups)
	if err != nil {
		return err
	}
	memcg, err := e.memoryCgroup()
	if err != nil {
		progress("no memory cgroup for forkwatch (%v): VmHWM only", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	quiet := waitQuiet(ctx)
	// gctrace: one line per collection on stderr, with the Go heap's size.
	fw, err := startForkwatchWith(ctx, e, nil, fwOpts{memcg: memcg.dir, env: []string{"GODEBUG=gctrace=1"}},
		"-o", "json", "--metrics-addr", addr)
	if err != nil {
		return err
	}
	defer fw.stop()
	hwmStart, err := status(fw.pid(), "VmHWM")
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	scrape := func() error {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}

	d := time.Duration(*rssMinutes * float64(time.Minute))
	progress("peak RSS: %s with %d pod cgroups", d, len(cgs))
	start := time.Now()
	cpu0 := mustCPU(fw.pid())
	var peak memSample
	lastScrape, lastReport := time.Time{}, start
	for i := 0; time.Since(start) < d; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := runOutput(ctx, *stormBin, "churn", "--kind", "process", "--duration", "1ms", "--cgroup", cgs[i%len(cgs)]); err != nil {
			return err
		}
		if time.Since(lastScrape) >= 5*time.Second {
			if err := scrape(); err != nil {
				return fmt.Errorf("scraping forkwatch's metrics: %w", err)
			}
			lastScrape = time.Now()
		}
		peak.max(sampleMem(fw.pid()))
		if time.Since(lastReport) >= time.Minute {
			s := sampleMem(fw.pid())
			progress("peak RSS: %s of %s, VmRSS %.1f MiB (anon %.1f, file %.1f), VmHWM %.1f MiB, memory cgroup peak %.1f MiB",
				time.Since(start).Round(time.Second), d, mib(s.rss), mib(s.anon), mib(s.file), mib(s.hwm), mib(memcg.peak()))
			lastReport = time.Now()
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	cpu := float64(mustCPU(fw.pid())-cpu0) / float64(time.Since(start))
	end := sampleMem(fw.pid())
	peak.max(end)
	parts := rssParts(fw.pid())
	mc := memcg.read()
	if err := fw.stopClean(); err != nil {
		return err
	}
	heap, goal := gcPeak(fw.stderr.String())

	busy := ""
	if !quiet {
		busy = " [started on a busy machine]"
	}
	where := fmt.Sprintf("after %s, %d pod cgroups, metrics scraped every 5 s", fmtMinutes(*rssMinutes), len(cgs))
	hwmRow := fmt.Sprintf("%.1f MiB (%.1f at attach). Peaks sampled: anon %.1f, file-backed %.1f; at the end anon %.1f = Go heap (≤ %d MB at collections, goal ≤ %d MB) + stacks and runtime; file-backed %.1f = binary's text %.1f + ring buffer mapped twice %.1f + other %.1f%s",
		mib(end.hwm), mib(hwmStart), mib(peak.anon), mib(peak.file), mib(end.anon), heap, goal,
		mib(end.file), mib(parts.binary), mib(parts.ring), mib(max(0, end.file-parts.binary-parts.ring)), busy)
	// The target is on RSS, as ps and top show it; the memory cgroup's
	// figure (what a DaemonSet's limits.memory sees) is shown beside it.
	t.add("peak RSS (VmHWM) "+where, hwmRow, "< 40 MiB", verdict(end.hwm < 40<<10))
	if memcg.dir != "" {
		t.add("peak memory charged to its memory cgroup (what limits.memory sees)",
			fmt.Sprintf("%.1f MiB; at the end %.1f = anon %.1f + kernel %.1f (BPF maps, page tables, slab) + page cache %.1f",
				mib(mc.peak), mib(mc.usage), mib(mc.anon), mib(mc.kernel), mib(mc.cache)),
			"", "")
	}
	t.add(fmt.Sprintf("forkwatch CPU over that run, %d pods", len(cgs)), fmt.Sprintf("%.2f%% of a core", cpu*100), "", "")
	return nil
}

// memSample is a process's memory from /proc/<pid>/status, in kB.
type memSample struct{ rss, anon, file, hwm int64 }

func sampleMem(pid int) memSample {
	var s memSample
	s.rss, _ = status(pid, "VmRSS")
	s.anon, _ = status(pid, "RssAnon")
	s.file, _ = status(pid, "RssFile")
	s.hwm, _ = status(pid, "VmHWM")
	return s
}

func (s *memSample) max(o memSample) {
	s.rss, s.anon, s.file, s.hwm = max(s.rss, o.rss), max(s.anon, o.anon), max(s.file, o.file), max(s.hwm, o.hwm)
}

var gcLine = regexp.MustCompile(`(\d+)->(\d+)->(\d+) MB, (\d+) MB goal`)

// gcPeak reads GODEBUG=gctrace=1 output: the largest heap seen at a
// collection and the largest goal, in MB.
func gcPeak(stderr string) (heap, goal int) {
	for _, m := range gcLine.FindAllStringSubmatch(stderr, -1) {
		a, _ := strconv.Atoi(m[1])
		b, _ := strconv.Atoi(m[2])
		g, _ := strconv.Atoi(m[4])
		heap, goal = max(heap, a, b), max(goal, g)
	}
	return heap, goal
}

type rssBreakdown struct{ ring, binary int64 }

// rssParts finds, among a process's resident mappings (kB), its executable
// and the BPF maps mapped into it (the ring buffer: its data pages are
// mapped twice, so that a record never wraps).
func rssParts(pid int) rssBreakdown {
	var r rssBreakdown
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return r
	}
	defer f.Close()
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	name := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			name = ""
			if len(fields) >= 6 {
				name = strings.Join(fields[5:], " ")
			}
			continue
		}
		if fields[0] != "Rss:" || len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch {
		case strings.HasPrefix(name, "anon_inode:bpf"):
			r.ring += kb
		case name == exe:
			r.binary += kb
		}
	}
	return r
}

// memCgroup is a memory cgroup made for one forkwatch (v1 or v2).
type memCgroup struct {
	dir string
	v2  bool
}

type memCharge struct{ peak, usage, anon, kernel, cache int64 } // kB

// memoryCgroup makes a memory cgroup for forkwatch, removed when the bench
// ends.
func (e *env) memoryCgroup() (memCgroup, error) {
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.max_usage_in_bytes"); err == nil {
		dir := filepath.Join("/sys/fs/cgroup/memory", filepath.Base(e.base))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return memCgroup{}, err
		}
		onCleanup(func() { removeTree(dir) })
		return memCgroup{dir: dir}, nil
	}
	b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err != nil || !slices.Contains(strings.Fields(string(b)), "memory") {
		return memCgroup{}, fmt.Errorf("no memory controller")
	}
	if !e.v2 {
		return memCgroup{}, fmt.Errorf("memory controller on cgroup v2, pids on v1")
	}
	for _, p := range []string{e.root, e.base} {
		if err := writeFile(filepath.Join(p, "cgroup.subtree_control"), "+memory"); err != nil {
			return memCgroup{}, err
		}
	}
	dir := filepath.Join(e.base, "forkwatch-memory")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return memCgroup{}, err
	}
	return memCgroup{dir: dir, v2: true}, nil
}

func (m memCgroup) peak() int64 {
	if m.dir == "" {
		return 0
	}
	return m.read().peak
}

func (m memCgroup) read() memCharge {
	var c memCharge
	if m.dir == "" {
		return c
	}
	kb := func(file string) int64 {
		n, _ := readInt(filepath.Join(m.dir, file))
		return n >> 10
	}
	stat := map[string]int64{}
	if b, err := os.ReadFile(filepath.Join(m.dir, "memory.stat")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				stat[k] = n >> 10
			}
		}
	}
	if m.v2 {
		c.peak, c.usage = kb("memory.peak"), kb("memory.current")
		c.anon, c.kernel, c.cache = stat["anon"], stat["kernel"], stat["file"]
		return c
	}
	c.peak, c.usage = kb("memory.max_usage_in_bytes"), kb("memory.usage_in_bytes")
	c.anon, c.kernel, c.cache = stat["rss"], kb("memory.kmem.usage_in_bytes"), stat["cache"]
	return c
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

func fmtMinutes(m float64) string {
	if m == float64(int(m)) {
		return fmt.Sprintf("%d min", int(m))
	}
	return fmt.Sprintf("%.1f min", m)
}
