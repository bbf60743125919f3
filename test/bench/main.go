// Command bench measures what forkwatch costs and how much it takes, on the
// machine it runs on, and prints one table. Run by hand, as root: make bench
// (BENCH_ARGS=-rss-minutes=1 to shorten). It is never run by the test suite.
//
// Every comparison is measured side by side in the same run, in paired runs
// whose order alternates (untraced then traced, traced then untraced, …),
// and reported as the median. Every cgroup and process it creates is removed
// when it ends, also on Ctrl-C.
//
// Before each measurement it waits for the machine to be quiet (no other
// tracer attached, no other load), and marks what it had to measure on a
// busy machine.
//
// The bench runs copies of itself as load generators ("bench worker-fail",
// "bench worker-churn", "bench worker-touch", "bench worker-threads"); see
// workers.go and threads.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

var (
	forkwatchBin = flag.String("forkwatch", "bin/forkwatch", "the forkwatch binary to measure")
	stormBin     = flag.String("storm", "bin/storm", "test/storm's binary")
	pairs        = flag.Int("pairs", 7, "paired runs per comparison (and start-up runs)")
	stormTime    = flag.Duration("storm-time", 3*time.Second, "length of each thread/fork storm run")
	failTime     = flag.Duration("fail-time", 5*time.Second, "length of each failure storm run")
	failProcs    = flag.Int("fail-procs", 4, "processes retrying clone at the full cgroup")
	cpuRate      = flag.Int("cpu-rate", 20000, "thread creations per second while forkwatch's CPU is measured")
	cpuTime      = flag.Duration("cpu-time", 20*time.Second, "how long forkwatch's CPU is measured, idle and under load each")
	rssMinutes   = flag.Float64("rss-minutes", 10, "how long forkwatch runs with 500 pod cgroups before its peak RSS is read")
	rssCgroups   = flag.Int("rss-cgroups", 500, "pod cgroups existing while RSS is measured")
	only         = flag.String("only", "", "run only these sections, comma-separated: storms,failures,cpu,threads,start,arming,rss")
	kinds        = flag.String("kinds", "thread,process,syscall", "storms section: the storms to run (syscall: a getppid loop, what a tracer adds to every syscall)")
	mode         = flag.String("mode", "", "forkwatch's --mode (default: its own, auto)")
	tracersFlag  = flag.String("tracers", "none,forkwatch,always-on,pod,bpftrace", "storms section: the tracers to compare, none being the A/A control, forkwatch ad hoc (failure hooks attached throughout) and always-on (armed by pressure) (also bpftrace-syscalls, bpftrace-counts: forkwatch's two kinds of hooks, each done by bpftrace)")
)

func main() {
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "worker-") {
		os.Exit(worker(os.Args[1], os.Args[2:]))
	}
	flag.Parse()
	defer func() {
		// A bug in the bench still removes what it made.
		if r := recover(); r != nil {
			cleanup()
			panic(r)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	start := time.Now()
	err := run(ctx)
	stop()
	cleanup()
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "bench: interrupted; everything it started is removed")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bench: done in %s\n", time.Since(start).Round(time.Second))
}

func want(section string) bool { return *only == "" || inList(*only, section) }

func inList(list, name string) bool {
	for _, s := range strings.Split(list, ",") {
		if strings.TrimSpace(s) == name {
			return true
		}
	}
	return false
}

// env is what every section shares: the bench's cgroup tree, the fake
// kubelet pod-log directory, the binaries.
type env struct {
	root     string // the pids hierarchy's mount
	v2       bool
	base     string // the bench's own cgroup, <root>/forkwatch-bench-<random>
	podLogs  string // kubelet-like /var/log/pods
	tmp      string
	cpus     int
	stormCPU int      // the core storms are pinned to
	self     string   // this program, run again as a load generator
	pods     []string // see manyPods
}

func run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it loads BPF programs and creates cgroups (sudo make bench)")
	}
	if runtime.GOOS != "linux" {
		return errors.New("linux only")
	}
	for _, b := range []*string{forkwatchBin, stormBin} {
		if _, err := os.Stat(*b); err != nil {
			return fmt.Errorf("%v: build it first (make bench does)", err)
		}
		abs, _ := filepath.Abs(*b)
		*b = abs
	}
	e := &env{cpus: runtime.NumCPU()}
	var err error
	if e.self, err = os.Executable(); err != nil {
		return err
	}
	if e.root, e.v2, err = pidsHierarchy(); err != nil {
		return err
	}
	if e.cpus < 2 {
		return errors.New("needs at least 2 cores: storms are pinned to one, forkwatch runs on the others")
	}
	e.stormCPU = e.cpus - 1
	e.base = filepath.Join(e.root, "forkwatch-bench-"+randHex(4))
	onCleanup(func() { removeTree(e.base) })
	if err := e.mkdir(e.base); err != nil {
		return err
	}
	if e.tmp, err = os.MkdirTemp("", "forkwatch-bench-"); err != nil {
		return err
	}
	onCleanup(func() { os.RemoveAll(e.tmp) })
	e.podLogs = filepath.Join(e.tmp, "pods")
	if err := os.MkdirAll(e.podLogs, 0o755); err != nil {
		return err
	}

	fmt.Println(machine(e.cpus))
	fmt.Println()
	var t table
	sections := []struct {
		name string
		f    func(context.Context, *env, *table) error
	}{
		{"storms", storms},
		{"failures", failures},
		{"cpu", cpuCost},
		{"threads", flaggedCost},
		{"start", startup},
		{"arming", arming},
		{"rss", rss},
	}
	for _, s := range sections {
		if !want(s.name) {
			continue
		}
		progress("%s…", s.name)
		if err := s.f(ctx, e, &t); err != nil {
			if ctx.Err() != nil {
				return context.Canceled
			}
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	t.print()
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// machine describes what the numbers were measured on.
func machine(cpus int) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	_ = syscall.Uname(&u)
	release := cString(u.Release[:])
	osName := ""
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				osName = ", " + strings.Trim(v, `"`)
			}
		}
	}
	return fmt.Sprintf("machine: %s, %d cores, kernel %s (%s)%s", model, cpus, release, cString(u.Machine[:]), osName)
}

func cString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// table collects the rows printed at the end.
type table struct{ rows [][4]string }

func (t *table) add(what, value, target, verdict string) {
	t.rows = append(t.rows, [4]string{what, value, target, verdict})
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func (t *table) print() {
	head := [4]string{"measure", "value", "target", ""}
	w := [4]int{}
	for _, r := range append([][4]string{head}, t.rows...) {
		for i, c := range r {
			w[i] = max(w[i], len([]rune(c)))
		}
	}
	line := func(r [4]string) {
		fmt.Print("|")
		for i, c := range r {
			fmt.Printf(" %s%s |", c, strings.Repeat(" ", w[i]-len([]rune(c))))
		}
		fmt.Println()
	}
	line(head)
	fmt.Print("|")
	for i := range w {
		fmt.Print(strings.Repeat("-", w[i]+2) + "|")
	}
	fmt.Println()
	for _, r := range t.rows {
		line(r)
	}
}
