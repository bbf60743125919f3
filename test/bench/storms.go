package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The closest peer: what one would type to count forks per cgroup.
const bpftraceOneLiner = `tracepoint:sched:sched_process_fork { @[cgroup] = count(); }`

var bpftraceProgram = flag.String("bpftrace-program", "", "storms section: a bpftrace program to compare too (-tracers bpftrace-program)")

// What forkwatch's default mode hooks on this kind of kernel, each half
// done by bpftrace, to tell their costs apart (-tracers
// bpftrace-syscalls,bpftrace-counts): the exits of the fork syscalls,
// doing nothing on success; and creations and exits counted per cgroup.
const (
	bpftraceSyscalls = `tracepoint:syscalls:sys_exit_clone, tracepoint:syscalls:sys_exit_clone3, tracepoint:syscalls:sys_exit_fork, tracepoint:syscalls:sys_exit_vfork /args->ret < 0/ { @failed = count(); }`
	bpftraceCounts   = `tracepoint:sched:sched_process_fork, tracepoint:sched:sched_process_exit { @[cgroup] = count(); }`
)

// A tracer under test: start returns its process and a function that
// stops it.
type tracerUnderTest struct {
	flag  string // its name in -tracers
	name  string
	start func(context.Context) (*proc, func() error, error)
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
	fwTracer := func(args ...string) func(context.Context) (*proc, func() error, error) {
		return func(ctx context.Context) (*proc, func() error, error) {
			fw, err := startForkwatch(ctx, e, nil, args...)
			if err != nil {
				return nil, nil, err
			}
			return fw.proc, fw.stopClean, nil
		}
	}
	tracers := []tracerUnderTest{
		// The control: both runs of a pair untraced. Its spread around
		// 1.000 is the method's noise on this machine.
		{"none", "no tracer (A/A control: the method's noise)", func(ctx context.Context) (*proc, func() error, error) {
			return nil, func() error { return nil }, nil
		}},
		{"forkwatch", "forkwatch ad hoc (failure hooks attached throughout)" + modeNote(), fwTracer("-o", "json", "--failure-hooks", "always")},
		{"always-on", "forkwatch always on (failure hooks armed by pressure, no limit near)" + modeNote(), fwTracer("-o", "json", "--failure-hooks", "pressure")},
		{"pod", "forkwatch --pod (tailing the storming pod)" + modeNote(), fwTracer("-o", "json", "--pod", "storm-0", "-n", "bench")},
	}
	bt := func(program string) func(context.Context) (*proc, func() error, error) {
		return func(ctx context.Context) (*proc, func() error, error) {
			p, err := startBpftrace(ctx, program)
			if err != nil {
				return nil, nil, err
			}
			return p, func() error { p.stop(); return nil }, nil
		}
	}
	if _, err := exec.LookPath("bpftrace"); err == nil {
		tracers = append(tracers,
			tracerUnderTest{"bpftrace", "bpftrace counting sched_process_fork per cgroup", bt(bpftraceOneLiner)},
			tracerUnderTest{"bpftrace-syscalls", "bpftrace on the exits of clone, clone3, fork, vfork (forkwatch's failure hooks)", bt(bpftraceSyscalls)},
			tracerUnderTest{"bpftrace-counts", "bpftrace counting sched_process_fork and _exit per cgroup (forkwatch's counters)", bt(bpftraceCounts)},
		)
		if *bpftraceProgram != "" {
			tracers = append(tracers, tracerUnderTest{"bpftrace-program", "bpftrace " + *bpftraceProgram, bt(*bpftraceProgram)})
		}
	} else if inList(*tracersFlag, "bpftrace") {
		t.add("bpftrace one-liner", "bpftrace not installed (apt-get install bpftrace)", "", "")
	}
	for _, kind := range []string{"thread", "process", "syscall"} {
		if !inList(*kinds, kind) {
			continue
		}
		for _, tr := range tracers {
			if !inList(*tracersFlag, tr.flag) {
				continue
			}
			if kind == "syscall" && tr.flag != "none" && tr.flag != "forkwatch" && tr.flag != "always-on" && tr.flag != "bpftrace-syscalls" {
				continue // the others add nothing to a syscall that forks nothing
			}
			progress("%s storm, %s: %d pairs of %s runs", kind, tr.name, *pairs, *stormTime)
			r, err := paired(ctx, tr, func(tracer *proc) (stormRun, error) { return storm(ctx, e, kind, ctr, tracer) })
			if err != nil {
				return fmt.Errorf("%s storm with %s: %w", kind, tr.name, err)
			}
			target, v := "", ""
			if kind == "thread" && tr.flag == "always-on" {
				target, v = "≥ 0.98×", verdict(r.ratio >= 0.98)
			}
			if kind == "syscall" {
				if tr.flag == "always-on" {
					// A syscall takes 1/ratio times as long traced.
					target, v = "≤ 1.03× the time", verdict(1/r.ratio <= 1.03)
				}
				t.add("syscall loop (getppid), "+tr.name,
					fmt.Sprintf("%.3f× the time: %+.0f ns on every syscall (%.0f ns vs %.0f ns untraced; pairs %s)%s",
						1/r.ratio, 1e9/r.traced-1e9/r.plain, 1e9/r.traced, 1e9/r.plain, r.spread(), r.noise()),
					target, v)
				continue
			}
			t.add(fmt.Sprintf("%s storm, %s", kind, tr.name),
				fmt.Sprintf("%.3f× (%.0f/s vs %.0f/s untraced; pairs %s)%s", r.ratio, r.traced, r.plain, r.spread(), r.noise()),
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
	noisy                int // pairs measured on a busy machine
}

func (r pairResult) noise() string {
	if r.noisy == 0 {
		return ""
	}
	return fmt.Sprintf(" [%d of %d pairs on a busy machine]", r.noisy, len(r.ratios))
}

func (r pairResult) spread() string {
	s := make([]string, len(r.ratios))
	for i, x := range r.ratios {
		s[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(s, " ")
}

// stormRun is one storm's rate, and how busy the machine was meanwhile
// outside the storm and the tracer.
type stormRun struct {
	rate    float64
	outside float64 // cores
}

// A run is on a busy machine when something besides the storm and the
// tracer kept this much of a core busy. The storm's own deferred kernel
// work (RCU callbacks freeing its tasks, mostly) counts here too: about 0.1
// core for a thread storm.
const busyOutside = 0.35

// paired measures untraced and traced runs in pairs whose order alternates,
// and returns the median of the per-pair ratios and the medians of each. A
// pair counts as on a busy machine when the machine was not quiet before it,
// something else kept it busy during a run, or another tracer loaded BPF
// programs meanwhile.
func paired(ctx context.Context, tr tracerUnderTest, measure func(tracer *proc) (stormRun, error)) (pairResult, error) {
	var r pairResult
	var plains, traceds []float64
	for i := 0; i < *pairs; i++ {
		busy := !waitQuiet(ctx)
		watch := watchPrograms()
		var p, q stormRun
		plainRun := func() (err error) { p, err = measure(nil); return err }
		tracedRun := func() error {
			watch.pause()
			tracer, stop, err := tr.start(ctx)
			if err != nil {
				return err
			}
			if tracer != nil {
				watch.addOurs(tracer.pid())
			}
			watch.resume()
			time.Sleep(200 * time.Millisecond) // let it settle after attaching
			q, err = measure(tracer)
			watch.pause() // it unloads its programs
			if serr := stop(); err == nil {
				err = serr
			}
			watch.resume()
			return err
		}
		order := []func() error{plainRun, tracedRun}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, f := range order {
			if err := ctx.Err(); err != nil {
				watch.end()
				return r, err
			}
			if err := f(); err != nil {
				watch.end()
				return r, err
			}
		}
		foreign := watch.end()
		if foreign != "" {
			progress("another tracer loaded BPF programs during the pair: %s", foreign)
		}
		if p.outside > busyOutside || q.outside > busyOutside {
			progress("the machine was busy during the pair: %.2f and %.2f cores outside the storm and the tracer", p.outside, q.outside)
		}
		if busy || foreign != "" || p.outside > busyOutside || q.outside > busyOutside {
			r.noisy++
		}
		r.ratios = append(r.ratios, q.rate/p.rate)
		plains, traceds = append(plains, p.rate), append(traceds, q.rate)
	}
	r.ratio, r.plain, r.traced = median(r.ratios), median(plains), median(traceds)
	return r, nil
}

// storm runs `storm churn` pinned to one core and returns its creations per
// second, and how busy the machine was besides it and the tracer.
func storm(ctx context.Context, e *env, kind, cgroup string, tracer *proc) (stormRun, error) {
	var r stormRun
	var out bytes.Buffer
	cmd := []string{"churn", "--kind", kind, "--duration", stormTime.String(), "--cgroup", cgroup}
	if kind == "syscall" {
		cmd = []string{"syscalls", "--duration", stormTime.String()}
	}
	p := newProc(&out, "taskset", append([]string{"-c", strconv.Itoa(e.stormCPU), *stormBin}, cmd...)...)
	busy0, _ := machineCPU()
	var tr0 int64
	if tracer != nil {
		tr0, _ = cpuTicks(tracer.pid())
	}
	t0 := time.Now()
	if err := p.start(); err != nil {
		return r, err
	}
	if err := p.wait(ctx); err != nil {
		return r, err
	}
	wall := time.Since(t0)
	busy1, _ := machineCPU()
	var tr1 int64
	if tracer != nil {
		tr1, _ = cpuTicks(tracer.pid())
	}
	own := p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
	r.outside = (float64(busy1-busy0) - float64(own) - float64(tr1-tr0)) / float64(wall)
	var s struct{ Created, Syscalls int }
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		return r, fmt.Errorf("storm %s printed %q: %w", cmd[0], out.String(), err)
	}
	r.rate = float64(s.Created+s.Syscalls) / stormTime.Seconds()
	return r, nil
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
