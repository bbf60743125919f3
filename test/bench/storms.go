package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The closest peer: what one would type to count forks per cgroup.
const bpftraceOneLiner = `tracepoint:sched:sched_process_fork { @[cgroup] = count(); }`

// A tracer under test: start it, and the returned function stops it.
type tracerUnderTest struct {
	flag  string // its name in -tracers
	name  string
	start func(context.Context) (func() error, error)
}

// storms measures thread and fork storm throughput untraced and under each
// tracer, in alternating pairs.
func storms(ctx context.Context, e *env, t *table) error {
	_, ctr, err := e.fakePod("", "bench", "storm-0")
	if err != nil {
		return err
	}
	if inList(*tracersFlag, "pod") {
		if err := checkPodTail(ctx, e, ctr); err != nil {
			return err
		}
	}
	tracers := []tracerUnderTest{
		{"forkwatch", "forkwatch", func(ctx context.Context) (func() error, error) {
			fw, err := startForkwatch(ctx, e, nil, "-o", "json")
			if err != nil {
				return nil, err
			}
			return fw.stopClean, nil
		}},
		{"pod", "forkwatch --pod", func(ctx context.Context) (func() error, error) {
			fw, err := startForkwatch(ctx, e, nil, "-o", "json", "--pod", "storm-0", "-n", "bench")
			if err != nil {
				return nil, err
			}
			return fw.stopClean, nil
		}},
	}
	if _, err := exec.LookPath("bpftrace"); err == nil {
		tracers = append(tracers, tracerUnderTest{"bpftrace", "bpftrace one-liner", func(ctx context.Context) (func() error, error) {
			p, err := startBpftrace(ctx, bpftraceOneLiner)
			if err != nil {
				return nil, err
			}
			return func() error { p.stop(); return nil }, nil
		}})
	} else {
		t.add("bpftrace one-liner", "bpftrace not installed", "", "")
	}
	for _, kind := range []string{"thread", "process"} {
		if !inList(*kinds, kind) {
			continue
		}
		for _, tr := range tracers {
			if !inList(*tracersFlag, tr.flag) {
				continue
			}
			progress("%s storm, %s: %d pairs of %s runs", kind, tr.name, *pairs, *stormTime)
			r, err := paired(ctx, tr, func() (float64, error) { return storm(ctx, e, kind, ctr) })
			if err != nil {
				return fmt.Errorf("%s storm with %s: %w", kind, tr.name, err)
			}
			target, v := "", ""
			if kind == "thread" && tr.name == "forkwatch" {
				target, v = "≥ 0.98×", verdict(r.ratio >= 0.98)
			}
			t.add(fmt.Sprintf("%s storm, %s", kind, tr.name),
				fmt.Sprintf("%.3f× (%.0f/s vs %.0f/s untraced; ratios %s)%s", r.ratio, r.traced, r.plain, r.spread(), r.noise()),
				target, v)
		}
	}
	return nil
}

// checkPodTail makes sure the --pod runs measure what they claim: that
// forkwatch finds the fake pod and streams its creations.
func checkPodTail(ctx context.Context, e *env, ctr string) error {
	var out bytes.Buffer
	fw, err := startForkwatch(ctx, e, &out, "-o", "json", "--pod", "storm-0", "-n", "bench")
	if err != nil {
		return err
	}
	_, err = runOutput(ctx, "taskset", "-c", strconv.Itoa(e.stormCPU), *stormBin, "churn", "--kind", "thread", "--duration", "200ms", "--cgroup", ctr)
	time.Sleep(300 * time.Millisecond)
	if serr := fw.stopClean(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if !bytes.Contains(out.Bytes(), []byte(`"event":"task_created"`)) {
		return fmt.Errorf("forkwatch --pod storm-0 streamed no task_created for the storm's pod; it wrote:\n%.2000s", out.String())
	}
	return nil
}

type pairResult struct {
	ratio, plain, traced float64
	ratios               []float64
	noisy                int // pairs measured while a foreign tracer ran
}

func (r pairResult) noise() string {
	if r.noisy == 0 {
		return ""
	}
	return fmt.Sprintf(" [%d pairs with another tracer running]", r.noisy)
}

func (r pairResult) spread() string {
	s := make([]string, len(r.ratios))
	for i, x := range r.ratios {
		s[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(s, " ")
}

// paired measures untraced and traced runs in pairs whose order alternates,
// and returns the median of the per-pair ratios and the medians of each.
func paired(ctx context.Context, tr tracerUnderTest, measure func() (float64, error)) (pairResult, error) {
	var r pairResult
	var plains, traceds []float64
	for i := 0; i < *pairs; i++ {
		if !waitQuiet(ctx, 2*time.Minute) {
			r.noisy++
		}
		var p, q float64
		plainRun := func() (err error) { p, err = measure(); return err }
		tracedRun := func() error {
			stop, err := tr.start(ctx)
			if err != nil {
				return err
			}
			time.Sleep(200 * time.Millisecond) // let it settle after attaching
			q, err = measure()
			if serr := stop(); err == nil {
				err = serr
			}
			return err
		}
		order := []func() error{plainRun, tracedRun}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, f := range order {
			if err := ctx.Err(); err != nil {
				return r, err
			}
			if err := f(); err != nil {
				return r, err
			}
		}
		r.ratios = append(r.ratios, q/p)
		plains, traceds = append(plains, p), append(traceds, q)
	}
	r.ratio, r.plain, r.traced = median(r.ratios), median(plains), median(traceds)
	return r, nil
}

// storm runs `storm churn` pinned to one core and returns its creations per
// second.
func storm(ctx context.Context, e *env, kind, cgroup string) (float64, error) {
	out, err := runOutput(ctx, "taskset", "-c", strconv.Itoa(e.stormCPU), *stormBin, "churn", "--kind", kind,
		"--duration", stormTime.String(), "--cgroup", cgroup)
	if err != nil {
		return 0, err
	}
	var s struct{ Created int }
	if err := json.Unmarshal(out, &s); err != nil {
		return 0, fmt.Errorf("storm churn printed %q: %w", out, err)
	}
	return float64(s.Created) / stormTime.Seconds(), nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
