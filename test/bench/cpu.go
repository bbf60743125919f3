package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// cpuCost measures forkwatch's own CPU (user+sys, /proc/PID/stat), idle and
// while a thread storm creates and ends threads at --cpu-rate, on a node
// without other pods and with --rss-cgroups pods that have each seen a
// task; and what its BPF programs cost per creation in the kernel (charged
// to the storming tasks, not to forkwatch).
func cpuCost(ctx context.Context, e *env, t *table) error {
	_, ctr, err := e.fakePod("besteffort", "bench", "churn-0")
	if err != nil {
		return err
	}
	bare, err := measureCPU(ctx, e, ctr, nil)
	if err != nil {
		return err
	}
	pods, err := e.manyPods(*rssCgroups)
	if err != nil {
		return err
	}
	many, err := measureCPU(ctx, e, ctr, pods)
	if err != nil {
		return err
	}
	for _, m := range []cpuResult{bare, many} {
		where := "no other pods"
		if m.pods > 0 {
			where = fmt.Sprintf("%d pods with counters", m.pods)
		}
		// Below the rate asked for (a slow or busy machine), the share
		// at that rate is extrapolated from the per-creation part.
		at := m.busy
		extra := ""
		if m.rate < 0.98*float64(*cpuRate) {
			at = m.idle + max(0, m.busy-m.idle)*float64(*cpuRate)/m.rate
			extra = fmt.Sprintf("; at %d/s: %.2f%%", *cpuRate, at*100)
		}
		per10k := func(share float64) float64 { return share * 1e3 / m.rate * 1e4 } // ms
		t.add(fmt.Sprintf("forkwatch CPU at %.0f thread creations/s, %s", m.rate, where),
			fmt.Sprintf("%.2f%% of a core (idle %.2f%%%s): %.2f ms per 10k creations, %.2f ms above idle%s",
				m.busy*100, m.idle*100, extra, per10k(m.busy), per10k(max(0, m.busy-m.idle)), m.noise()),
			"< 2% at 20k/s", verdict(at < 0.02))
	}
	if bare.statsErr != nil {
		t.add("in-kernel cost per creation", "bpf stats unavailable: "+bare.statsErr.Error(), "", "")
	} else {
		t.add("in-kernel cost per thread created+exited (bpf stats)",
			fmt.Sprintf("%.0f ns (%s): %.2f%% of a core at %.0f/s, charged to the storm", bare.kernelNs, bare.perProg, bare.kernelNs*bare.rate/1e7, bare.rate),
			"", "")
	}
	return nil
}

type cpuResult struct {
	pods       int
	rate       float64 // creations/s achieved
	idle, busy float64 // share of a core
	kernelNs   float64 // BPF run time per creation
	perProg    string
	statsErr   error
	busyNode   bool // measured on a busy machine
}

func (r cpuResult) noise() string {
	if r.busyNode {
		return " [measured on a busy machine]"
	}
	return ""
}

// measureCPU starts forkwatch, has a task start in each of pods, then reads
// forkwatch's CPU over --cpu-time idle and over --cpu-time of a thread storm
// at --cpu-rate in ctr.
func measureCPU(ctx context.Context, e *env, ctr string, pods []string) (cpuResult, error) {
	r := cpuResult{pods: len(pods)}
	r.busyNode = !waitQuiet(ctx)
	fw, err := startForkwatch(ctx, e, nil, "-o", "json")
	if err != nil {
		return r, err
	}
	defer fw.stop()
	progs := openPrograms(fw.pid())
	defer closePrograms(progs)
	if len(pods) > 0 {
		list := filepath.Join(e.tmp, "pods.txt")
		if err := os.WriteFile(list, []byte(strings.Join(pods, "\n")), 0o644); err != nil {
			return r, err
		}
		if _, err := runOutput(ctx, e.self, "worker-touch", "--cgroups", list); err != nil {
			return r, err
		}
	}
	// Past start-up, and past the first sampling of every pod.
	if err := sleepCtx(ctx, 12*time.Second); err != nil {
		return r, err
	}

	progress("forkwatch CPU idle, %d pods, %s", len(pods), *cpuTime)
	c0, w0 := mustCPU(fw.pid()), time.Now()
	if err := sleepCtx(ctx, *cpuTime); err != nil {
		return r, err
	}
	r.idle = float64(mustCPU(fw.pid())-c0) / float64(time.Since(w0))

	// With the kernel's BPF run-time statistics on for the while (they
	// cost the storm a little themselves).
	progress("forkwatch CPU at %d thread creations/s, %d pods, %s", *cpuRate, len(pods), *cpuTime)
	stats, statsErr := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	r.statsErr = statsErr
	k0 := progRuntime(progs)
	c1, w1 := mustCPU(fw.pid()), time.Now()
	out, err := runOutput(ctx, "taskset", "-c", strconv.Itoa(e.stormCPU), e.self, "worker-churn",
		"--cgroup", ctr, "--rate", strconv.Itoa(*cpuRate), "--duration", cpuTime.String())
	busyNs, wall := mustCPU(fw.pid())-c1, time.Since(w1)
	k1 := progRuntime(progs)
	if statsErr == nil {
		stats.Close()
	}
	if err != nil {
		return r, err
	}
	var s struct{ Created, NS int64 }
	if err := json.Unmarshal(out, &s); err != nil || s.Created == 0 {
		return r, fmt.Errorf("worker-churn printed %q: %v", out, err)
	}
	r.rate = float64(s.Created) / time.Duration(s.NS).Seconds()
	r.busy = float64(busyNs) / float64(wall)
	var total time.Duration
	var parts []string
	names := make([]string, 0, len(k1))
	for name := range k1 {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		d := k1[name].runtime - k0[name].runtime
		n := k1[name].runs - k0[name].runs
		total += d
		if float64(n) >= 0.01*float64(s.Created) {
			parts = append(parts, fmt.Sprintf("%s %.0f ns × %.2f", name, float64(d)/float64(n), float64(n)/float64(s.Created)))
		}
	}
	r.kernelNs = float64(total) / float64(s.Created)
	r.perProg = strings.Join(parts, ", ")
	return r, fw.stopClean()
}

// mustCPU is a process's user+sys in ns (0 if it is gone).
func mustCPU(pid int) int64 {
	n, err := cpuTicks(pid)
	if err != nil {
		return 0
	}
	return n
}

// openPrograms opens the BPF programs a process holds, by name.
func openPrograms(pid int) map[string]*ebpf.Program {
	progs := map[string]*ebpf.Program{}
	for _, id := range programIDsOf(pid) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err != nil || progs[info.Name] != nil {
			p.Close()
			continue
		}
		progs[info.Name] = p
	}
	return progs
}

func closePrograms(progs map[string]*ebpf.Program) {
	for _, p := range progs {
		p.Close()
	}
}

type progStats struct {
	runtime time.Duration
	runs    uint64
}

func progRuntime(progs map[string]*ebpf.Program) map[string]progStats {
	out := map[string]progStats{}
	for name, p := range progs {
		if st, err := p.Stats(); err == nil {
			out[name] = progStats{st.Runtime, st.RunCount}
		}
	}
	return out
}

// startup measures exec to --ready-file, the median of --pairs starts.
func startup(ctx context.Context, e *env, t *table) error {
	busy := ""
	if !waitQuiet(ctx) {
		busy = " [on a busy machine]"
	}
	var d []float64
	for i := 0; i < *pairs; i++ {
		fw, err := startForkwatch(ctx, e, nil, "-o", "json")
		if err != nil {
			return err
		}
		d = append(d, fw.attach.Seconds())
		if err := fw.stopClean(); err != nil {
			return err
		}
	}
	m := median(d)
	lo, hi := d[0], d[0]
	for _, x := range d {
		lo, hi = min(lo, x), max(hi, x)
	}
	t.add("start to attached (exec to --ready-file)", fmt.Sprintf("%.0f ms (%.0f–%.0f ms over %d starts)%s", m*1000, lo*1000, hi*1000, len(d), busy),
		"< 1 s", verdict(m < 1))
	return nil
}
