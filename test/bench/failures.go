package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

var (
	failReps  = flag.Int("fail-reps", 3, "failure storm runs per rate: a rate counts as lossless only if every run is")
	failRates = flag.String("fail-rates", "25000,50000,75000,100000,150000,200000,300000", "failure storm: the rates (failures/s) stepped through until forkwatch loses some")
)

// A failure storm: a pod's cgroup at its pids.max and --fail-procs
// processes retrying thread clones in a tight loop, paced to a total rate.
type failRun struct {
	target   int     // attempts/s asked for, 0 = flat out
	rate     float64 // failures/s achieved
	failures int64   // what the storms saw fail
	created  int64   // clones that succeeded after all (a slot freed up)
	reported int64   // fork_failed objects forkwatch wrote for the storms
	lost     int64   // the sum of its events_lost counts
	foreign  int64   // fork_failed objects for other cgroups: the node's own failures
	cpuNs    int64   // forkwatch's user+sys from the start of the storm until it had written everything
	kernelNs float64 // with stats: BPF run time per failing clone
	busy     bool    // measured on a busy machine
}

// addsUp says whether forkwatch accounted for every failure: reported, or
// counted lost. The loss counter is the node's: failures elsewhere on the
// node during the run may be in it.
func (r failRun) addsUp() bool {
	return r.reported <= r.failures && r.reported+r.lost >= r.failures && r.reported+r.lost <= r.failures+r.foreign
}

func (r failRun) String() string {
	s := fmt.Sprintf("%d reported + %d lost of %d", r.reported, r.lost, r.failures)
	if !r.addsUp() {
		s += fmt.Sprintf(" (off by %d)", r.failures-r.reported-r.lost)
	}
	if r.foreign > 0 {
		s += fmt.Sprintf(" (and %d failures elsewhere on the node)", r.foreign)
	}
	return s
}

// cpuShare is forkwatch's CPU over the storm, as a share of a core.
func (r failRun) cpuShare() float64 {
	return float64(r.cpuNs) / float64(*failTime) // the drain after the storm counts too
}

// failSet is one rate's runs.
type failSet struct {
	target int
	runs   []failRun
}

func (s failSet) clean() bool {
	for _, r := range s.runs {
		if r.lost > 0 || !r.addsUp() {
			return false
		}
	}
	return len(s.runs) > 0
}

func (s failSet) rate() float64 {
	v := make([]float64, len(s.runs))
	for i, r := range s.runs {
		v[i] = r.rate
	}
	return median(v)
}

// sum adds up the runs' counts.
func (s failSet) sum() failRun {
	var t failRun
	var cpu []float64
	for _, r := range s.runs {
		t.failures += r.failures
		t.reported += r.reported
		t.lost += r.lost
		t.foreign += r.foreign
		t.created += r.created
		cpu = append(cpu, float64(r.cpuNs)/float64(max(r.failures, 1)))
	}
	t.cpuNs = int64(median(cpu)) // per failure
	return t
}

func (s failSet) describe() string {
	sum := s.sum()
	share := make([]float64, len(s.runs))
	for i, r := range s.runs {
		share[i] = r.cpuShare()
	}
	return fmt.Sprintf("%.0f failures/s: %s over %d runs of %s; forkwatch used %.0f%% of a core, %.1f µs per failure%s",
		s.rate(), sum, len(s.runs), *failTime, median(share)*100, float64(sum.cpuNs)/1e3, s.noise())
}

func (s failSet) noise() string {
	n := 0
	for _, r := range s.runs {
		if r.busy {
			n++
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" [%d of %d runs on a busy machine]", n, len(s.runs))
}

// failures finds the highest failure rate forkwatch reports with zero loss
// (default ring buffer) and what its loss counter says above it; and
// measures the generator flat out, untraced and traced.
func failures(ctx context.Context, e *env, t *table) error {
	podDir, ctr, err := e.fakePod("burstable", "bench", "failing-0")
	if err != nil {
		return err
	}
	pod := failPod{podDir, ctr}
	const what = "failure storm"

	runSet := func(target int, o failOpts) (failSet, error) {
		s := failSet{target: target}
		for i := 0; i < *failReps; i++ {
			r, err := failureStorm(ctx, e, pod, target, o)
			if err != nil {
				return s, err
			}
			s.runs = append(s.runs, r)
			if !o.traced {
				progress("failure storm at %s/s, untraced: %.0f failures/s", targetName(target), r.rate)
				continue
			}
			progress("failure storm at %s/s: %.0f failures/s, %s; forkwatch %.1f%% of a core",
				targetName(target), r.rate, r, r.cpuShare()*100)
			if r.lost > 0 || !r.addsUp() {
				break // the rate is lossy already
			}
		}
		return s, nil
	}

	// What the generator reaches with nothing attached.
	untraced, err := runSet(0, failOpts{})
	if err != nil {
		return err
	}

	// Step the rate up until forkwatch loses some or the generator cannot
	// go faster, then bisect once between the last clean rate and the
	// first lossy one.
	var clean, lossy *failSet
	for _, f := range strings.Split(*failRates, ",") {
		target, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || target <= 0 {
			return fmt.Errorf("bad -fail-rates %q", *failRates)
		}
		s, err := runSet(target, failOpts{traced: true})
		if err != nil {
			return err
		}
		if !s.clean() {
			lossy = &s
			break
		}
		if clean == nil || s.rate() > clean.rate() {
			clean = &s
		}
		if s.rate() < 0.9*float64(target) {
			break // the generator is saturated: flat out is next
		}
	}
	if lossy != nil && clean != nil {
		mid := (int(clean.rate()) + lossy.target) / 2
		s, err := runSet(mid, failOpts{traced: true})
		if err != nil {
			return err
		}
		if !s.clean() {
			lossy = &s
		} else if s.rate() > clean.rate() {
			clean = &s
		}
	}
	flat, err := runSet(0, failOpts{traced: true})
	if err != nil {
		return err
	}
	if flat.clean() && (clean == nil || flat.rate() > clean.rate()) {
		clean = &flat
	}
	if lossy == nil && !flat.clean() {
		lossy = &flat
	}

	const target = 50000
	t.add(fmt.Sprintf("%s (%d processes retrying thread clones at a full pod cgroup), flat out untraced", what, *failProcs),
		fmt.Sprintf("%.0f failures/s (the generator's limit on %d cores)%s", untraced.rate(), e.cpus, untraced.noise()), "", "")
	t.add(what+", flat out with forkwatch", fmt.Sprintf("%.0f failures/s: %.3f× untraced%s", flat.rate(), flat.rate()/untraced.rate(), flat.noise()), "", "")
	if clean != nil {
		t.add(what+", highest rate with 0 lost", clean.describe(), "0 lost at ≥ 50k/s", verdict(clean.rate() >= target))
	} else {
		t.add(what+", highest rate with 0 lost", "none: loss at the lowest rate tried", "0 lost at ≥ 50k/s", "MISS")
	}
	if lossy != nil {
		sum := lossy.sum()
		adds := true
		for _, r := range lossy.runs {
			adds = adds && r.addsUp()
		}
		t.add(what+" above it: the loss counter", fmt.Sprintf("%.0f failures/s: %s", lossy.rate(), sum), "adds up", verdict(adds))
	} else {
		t.add(what+" above it", "no loss even flat out: the generator is the limit", "", "")
	}

	// The loss counter with a small ring buffer, at the target rate: the
	// accounting must add up when forkwatch cannot keep everything. The
	// kernel's BPF statistics are on meanwhile: what a failure costs in
	// the kernel, charged to the failing caller.
	const small = 64 << 10
	r, err := failureStorm(ctx, e, pod, target, failOpts{traced: true, ring: small, stats: true})
	if err != nil {
		return err
	}
	progress("failure storm at %d/s, %d KiB ring buffer: %.0f failures/s, %s", target, small>>10, r.rate, r)
	t.add(what+fmt.Sprintf(", %d KiB ring buffer", small>>10), fmt.Sprintf("%.0f failures/s: %s", r.rate, r), "adds up", verdict(r.addsUp()))
	if r.kernelNs > 0 {
		t.add("in-kernel cost per failing clone (bpf stats)", fmt.Sprintf("%.0f ns of forkwatch's BPF programs, charged to the caller", r.kernelNs), "", "")
	}
	return nil
}

func targetName(target int) string {
	if target == 0 {
		return "flat-out"
	}
	return strconv.Itoa(target)
}

type failPod struct{ dir, ctr string }

type failOpts struct {
	traced bool
	ring   int  // forkwatch's --ring-buffer-size, 0 for its default
	stats  bool // read the BPF programs' run time
}

type failWorkerProc struct {
	p     *proc
	stdin io.WriteCloser
	out   *bufio.Reader
}

// failureStorm runs one failure storm at a total of target attempts/s (0:
// as fast as the generators go), under a fresh forkwatch if traced, and
// counts what it reported and lost.
func failureStorm(ctx context.Context, e *env, pod failPod, target int, o failOpts) (failRun, error) {
	r := failRun{target: target}
	r.busy = !waitQuiet(ctx)
	if err := ctx.Err(); err != nil {
		return r, err
	}
	if err := writeFile(filepath.Join(pod.dir, "pids.max"), "max"); err != nil {
		return r, err
	}
	// The generators join the pod's container cgroup.
	var workers []*failWorkerProc
	defer func() {
		_ = writeFile(filepath.Join(pod.dir, "pids.max"), "max")
		for _, w := range workers {
			w.stdin.Close()
		}
		for _, w := range workers {
			w.p.stop()
		}
	}()
	perProc := target / *failProcs
	for i := 0; i < *failProcs; i++ {
		pr, pw, err := os.Pipe()
		if err != nil {
			return r, err
		}
		p := newProc(pw, e.self, "worker-fail", "--cgroup", pod.ctr, "--rate", strconv.Itoa(perProc), "--duration", failTime.String())
		p.stopSig = syscall.SIGKILL // it blocks every signal, and holds nothing
		stdin, err := p.cmd.StdinPipe()
		if err != nil {
			return r, err
		}
		err = p.start()
		pw.Close()
		if err != nil {
			pr.Close()
			return r, err
		}
		workers = append(workers, &failWorkerProc{p: p, stdin: stdin, out: bufio.NewReader(pr)})
	}
	for _, w := range workers {
		if l, err := readLine(ctx, w); err != nil || l != "ready" {
			return r, fmt.Errorf("failure generator: %q %v: %s", l, err, w.p.stderr.String())
		}
	}

	// The pod is full: nothing more can start in it.
	cur, err := readInt(filepath.Join(pod.dir, "pids.current"))
	if err != nil {
		return r, err
	}
	if err := writeFile(filepath.Join(pod.dir, "pids.max"), strconv.FormatInt(cur, 10)); err != nil {
		return r, err
	}

	var fw *forkwatch
	var out *os.File
	var progs map[string]*ebpf.Program
	if o.traced {
		if out, err = os.CreateTemp(e.tmp, "failures-*.json"); err != nil {
			return r, err
		}
		defer os.Remove(out.Name())
		defer out.Close()
		args := []string{"-o", "json"}
		if o.ring > 0 {
			args = append(args, "--ring-buffer-size", strconv.Itoa(o.ring))
		}
		if fw, err = startForkwatch(ctx, e, out, args...); err != nil {
			return r, err
		}
		defer fw.stop()
		if o.stats {
			progs = openPrograms(fw.pid())
			defer closePrograms(progs)
			stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
			if err == nil {
				defer stats.Close()
			} else {
				progs = nil
			}
		}
	}

	k0 := progRuntime(progs)
	var cpu0 int64
	if fw != nil {
		cpu0, _ = cpuTicks(fw.pid())
	}
	for _, w := range workers {
		if _, err := w.stdin.Write([]byte("go\n")); err != nil {
			return r, err
		}
	}
	for _, w := range workers {
		l, err := readLine(ctx, w)
		if err != nil {
			return r, fmt.Errorf("failure generator: %v: %s", err, w.p.stderr.String())
		}
		var s struct {
			Failures, Created int64
			NS                int64
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			return r, fmt.Errorf("failure generator printed %q: %w", l, err)
		}
		r.failures += s.Failures
		r.created += s.Created
		r.rate += float64(s.Failures) / time.Duration(s.NS).Seconds()
	}
	if fw == nil {
		return r, nil
	}
	k1 := progRuntime(progs)
	var kernel time.Duration
	for name, s := range k1 {
		kernel += s.runtime - k0[name].runtime
	}
	if r.failures > 0 {
		r.kernelNs = float64(kernel) / float64(r.failures)
	}
	// Let forkwatch drain its ring buffer and write everything out (its
	// output stops growing), then stop it: it reports the last losses on
	// the way out.
	if err := waitStill(ctx, out.Name(), 500*time.Millisecond, 20*time.Second); err != nil {
		return r, err
	}
	cpu1, _ := cpuTicks(fw.pid())
	r.cpuNs = cpu1 - cpu0
	if err := fw.stopClean(); err != nil {
		return r, err
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return r, err
	}
	r.reported, r.foreign, r.lost, err = countFailures(out, filepath.Base(pod.ctr))
	return r, err
}

// waitStill waits until the file has not grown for still (at most limit).
func waitStill(ctx context.Context, path string, still, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last int64 = -1
	lastChange := time.Now()
	for time.Now().Before(deadline) {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		if st.Size() != last {
			last, lastChange = st.Size(), time.Now()
		} else if time.Since(lastChange) >= still {
			return nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func readLine(ctx context.Context, w *failWorkerProc) (string, error) {
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := w.out.ReadString('\n')
		ch <- res{string(bytes.TrimSpace([]byte(s))), err}
	}()
	select {
	case x := <-ch:
		return x.s, x.err
	case <-ctx.Done():
		w.p.stop()
		return "", ctx.Err()
	case <-time.After(time.Minute):
		w.p.stop()
		return "", errors.New("no answer within a minute")
	}
}

// countFailures counts, in forkwatch's JSON Lines, the fork_failed objects
// for the storms' cgroup and for any other, and adds up the events_lost
// counts.
func countFailures(r io.Reader, cgroupName string) (reported, foreign, lost int64, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	failed := []byte(`"event":"fork_failed"`)
	lostEv := []byte(`"event":"events_lost"`)
	name := []byte(`/` + cgroupName + `"`)
	for sc.Scan() {
		l := sc.Bytes()
		switch {
		case bytes.Contains(l, failed):
			if bytes.Contains(l, name) {
				reported++
			} else {
				foreign++
			}
		case bytes.Contains(l, lostEv):
			var ev struct{ Count int64 }
			if err := json.Unmarshal(l, &ev); err != nil {
				return 0, 0, 0, err
			}
			lost += ev.Count
		}
	}
	return reported, foreign, lost, sc.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
