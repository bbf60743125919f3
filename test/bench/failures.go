package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
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
	ringSize int     // 0: forkwatch's default
}

func (r failRun) addsUp() bool { return r.reported+r.lost == r.failures }

func (r failRun) String() string {
	s := fmt.Sprintf("%d reported + %d lost of %d", r.reported, r.lost, r.failures)
	if !r.addsUp() {
		s += fmt.Sprintf(" (off by %d)", r.failures-r.reported-r.lost)
	}
	return s
}

// failures finds the highest failure rate forkwatch reports with zero loss
// (default ring buffer), and what its loss counter says above it.
func failures(ctx context.Context, e *env, t *table) error {
	podDir, ctr, err := e.fakePod("burstable", "bench", "failing-0")
	if err != nil {
		return err
	}
	run := func(target, ring int) (failRun, error) {
		r, err := failureStorm(ctx, e, podDir, ctr, target, ring)
		if err == nil {
			ringName := "default"
			if ring > 0 {
				ringName = fmt.Sprintf("%d KiB", ring>>10)
			}
			progress("failure storm at %s/s, %s ring buffer: %.0f failures/s, %s", targetName(target), ringName, r.rate, r)
		}
		return r, err
	}

	// Step the rate up until forkwatch loses some, then bisect once
	// between the last clean rate and the first lossy one.
	var clean, lossy *failRun
	var flatOut failRun
	for _, target := range []int{25000, 50000, 100000, 200000, 400000, 0} {
		r, err := run(target, 0)
		if err != nil {
			return err
		}
		if target == 0 {
			flatOut = r
		}
		if r.lost > 0 || !r.addsUp() {
			lossy = &r
			break
		}
		clean = &r
		if target > 0 && r.rate < 0.8*float64(target) {
			// The generator is saturated: try flat out and stop.
			if r, err = run(0, 0); err != nil {
				return err
			}
			flatOut = r
			if r.lost > 0 || !r.addsUp() {
				lossy = &r
			} else if r.rate > clean.rate {
				clean = &r
			}
			break
		}
	}
	if clean != nil && lossy != nil && lossy.target != 0 {
		mid := (int(clean.rate) + lossy.target) / 2
		r, err := run(mid, 0)
		if err != nil {
			return err
		}
		if r.lost == 0 && r.addsUp() {
			clean = &r
		} else {
			lossy = &r
		}
	}

	const target = 50000
	if clean != nil {
		t.add(fmt.Sprintf("failure storm (%d procs at a full pod cgroup), highest rate with 0 lost", *failProcs),
			fmt.Sprintf("%.0f failures/s: %s", clean.rate, clean), "0 lost at ≥ 50k/s", verdict(clean.rate >= target))
	} else {
		t.add(fmt.Sprintf("failure storm (%d procs at a full pod cgroup), highest rate with 0 lost", *failProcs),
			"none: loss at the lowest rate tried", "0 lost at ≥ 50k/s", "MISS")
	}
	if lossy != nil {
		t.add("failure storm above it: loss counter", fmt.Sprintf("%.0f failures/s: %s", lossy.rate, lossy), "adds up", verdict(lossy.addsUp()))
	} else {
		t.add("failure storm flat out (generator's limit)", fmt.Sprintf("%.0f failures/s: %s", flatOut.rate, flatOut), "", "")
	}

	// The loss counter with a small ring buffer, at the target rate: the
	// accounting must add up when forkwatch cannot keep everything.
	const small = 64 << 10
	r, err := run(target, small)
	if err != nil {
		return err
	}
	t.add(fmt.Sprintf("failure storm, %d KiB ring buffer", small>>10), fmt.Sprintf("%.0f failures/s: %s", r.rate, r), "adds up", verdict(r.addsUp()))
	return nil
}

func targetName(target int) string {
	if target == 0 {
		return "flat-out"
	}
	return strconv.Itoa(target)
}

type failWorkerProc struct {
	p     *proc
	stdin io.WriteCloser
	out   *bufio.Reader
}

// failureStorm runs one failure storm at a total of target attempts/s (0:
// as fast as the generators go) under a fresh forkwatch, and counts what it
// reported and lost.
func failureStorm(ctx context.Context, e *env, podDir, ctr string, target, ringSize int) (failRun, error) {
	r := failRun{target: target, ringSize: ringSize}
	if err := writeFile(filepath.Join(podDir, "pids.max"), "max"); err != nil {
		return r, err
	}
	// The generators join the pod's container cgroup.
	var workers []*failWorkerProc
	defer func() {
		_ = writeFile(filepath.Join(podDir, "pids.max"), "max")
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
		p := newProc(pw, e.self, "worker-fail", "--cgroup", ctr, "--rate", strconv.Itoa(perProc), "--duration", failTime.String())
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
	cur, err := readInt(filepath.Join(podDir, "pids.current"))
	if err != nil {
		return r, err
	}
	if err := writeFile(filepath.Join(podDir, "pids.max"), strconv.FormatInt(cur, 10)); err != nil {
		return r, err
	}

	outPath := filepath.Join(e.tmp, "failures-"+randHex(4)+".json")
	if os.Getenv("BENCH_KEEP") != "" {
		outPath = filepath.Join("/tmp", filepath.Base(outPath))
	}
	out, err := os.Create(outPath)
	if err != nil {
		return r, err
	}
	if os.Getenv("BENCH_KEEP") == "" {
		defer os.Remove(outPath)
	} else {
		progress("keeping %s", outPath)
	}
	defer out.Close()
	args := []string{"-o", "json"}
	if ringSize > 0 {
		args = append(args, "--ring-buffer-size", strconv.Itoa(ringSize))
	}
	fw, err := startForkwatch(ctx, e, out, args...)
	if err != nil {
		return r, err
	}
	defer fw.stop()

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
	// Let forkwatch drain its ring buffer and flush (it writes every 100 ms),
	// then stop it: it reports the last losses on the way out.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return r, err
	}
	if err := fw.stopClean(); err != nil {
		return r, err
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return r, err
	}
	r.reported, r.lost, err = countFailures(out, []byte(filepath.Base(ctr)))
	return r, err
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

// countFailures counts the fork_failed objects naming the storms' cgroup and
// adds up the events_lost counts in forkwatch's JSON Lines.
func countFailures(r io.Reader, cgroupName []byte) (reported, lost int64, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	failed := []byte(`"event":"fork_failed"`)
	lostEv := []byte(`"event":"events_lost"`)
	for sc.Scan() {
		l := sc.Bytes()
		switch {
		case bytes.Contains(l, failed):
			if bytes.Contains(l, cgroupName) {
				reported++
			}
		case bytes.Contains(l, lostEv):
			var ev struct{ Count int64 }
			if err := json.Unmarshal(l, &ev); err != nil {
				return 0, 0, err
			}
			lost += ev.Count
		}
	}
	return reported, lost, sc.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
