// Command bench measures what forkwatch costs and how much it can take, on
// the machine it runs on, and prints one table. Run by hand (as root):
// make bench. Each comparison is measured side by side in the same run, in
// alternating pairs, and reported as the median.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	forkwatchBin = flag.String("forkwatch", "bin/forkwatch", "forkwatch binary")
	stormBin     = flag.String("storm", "bin/storm", "storm binary")
	pairs        = flag.Int("pairs", 5, "paired runs per comparison")
	stormSecs    = flag.Duration("storm-time", 3*time.Second, "length of each storm run")
	rssMinutes   = flag.Float64("rss-minutes", 10, "how long forkwatch runs with 500 cgroups before its peak RSS is read")
)

const pidsRoot = "/sys/fs/cgroup/pids"

type row struct{ what, value, target, verdict string }

var (
	rows     []row
	cleanups []func()
)

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx)
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	root := pidsRoot
	if _, err := os.Stat(root + "/cgroup.procs"); err != nil {
		root = "/sys/fs/cgroup"
	}
	base := filepath.Join(root, "forkwatch-bench-"+randHex(4))
	cleanups = append(cleanups, func() { removeTree(base) })
	uid := newUID()
	ctr := filepath.Join(base, "kubepods", "pod"+uid, randHex(32))
	mkdirs(root, ctr)
	logs, _ := os.MkdirTemp("", "forkwatch-bench-pods-")
	cleanups = append(cleanups, func() { os.RemoveAll(logs) })
	os.MkdirAll(filepath.Join(logs, "bench_storm-0_"+uid), 0o755)

	fmt.Printf("machine: %s, kernel %s, %d cores\n\n", cpuModel(), kernel(), countCores())

	// 1. Thread and fork storms: untraced vs traced, paired.
	for _, kind := range []string{"thread", "process"} {
		for _, tr := range []struct {
			name  string
			start func() (func(), error)
		}{
			{"forkwatch", func() (func(), error) { return startForkwatch(ctx, logs, "-o", "json") }},
			{"forkwatch --pod", func() (func(), error) {
				return startForkwatch(ctx, logs, "-o", "json", "--pod", "storm-0", "-n", "bench")
			}},
			{"bpftrace one-liner", startBpftrace},
		} {
			ratio, plain, traced, err := paired(ctx, tr.start, func() (float64, error) { return storm(kind, ctr) })
			if err != nil {
				return fmt.Errorf("%s storm with %s: %w", kind, tr.name, err)
			}
			target, verdict := "", ""
			if kind == "thread" && tr.name == "forkwatch" {
				target, verdict = "≥ 0.98×", passIf(ratio >= 0.98)
			}
			rows = append(rows, row{fmt.Sprintf("%s storm, %s (untraced %.0f/s)", kind, tr.name, plain),
				fmt.Sprintf("%.3f× (%.0f/s)", ratio, traced), target, verdict})
		}
	}

	// 2. Failure storm: several processes retrying at a full cgroup.
	for _, size := range []int{8 << 20, 256 << 10} {
		rate, reported, lost, failures, err := failureStorm(ctx, root, base, logs, size)
		if err != nil {
			return err
		}
		what := fmt.Sprintf("failure storm, %d KiB ring buffer: %.0f failures/s", size>>10, rate)
		value := fmt.Sprintf("%d reported + %d lost of %d", reported, lost, failures)
		target, verdict := "", ""
		if size == 8<<20 {
			target, verdict = "0 lost at ≥ 50k/s", passIf(lost == 0 && rate >= 50000 && reported == failures)
		}
		rows = append(rows, row{what, value, target, verdict})
	}

	// 3. CPU at a known creation rate.
	cpu, rate, err := cpuPerEvents(ctx, ctr, logs)
	if err != nil {
		return err
	}
	rows = append(rows, row{fmt.Sprintf("forkwatch CPU at %.0f creations/s", rate),
		fmt.Sprintf("%.2f%% of a core, %.1f ms per 10k (10 ms ticks)", cpu*100, cpu*1000/rate*10000), "< 2% at 20k/s", passIf(cpu < 0.02)})

	// 4. Start to attached.
	var starts []float64
	for i := 0; i < *pairs; i++ {
		d, err := timeToAttach(ctx, logs)
		if err != nil {
			return err
		}
		starts = append(starts, d.Seconds())
	}
	att := median(starts)
	rows = append(rows, row{"start to attached", fmt.Sprintf("%.0f ms", att*1000), "< 1 s", passIf(att < 1)})

	// 5. Peak RSS with 500 cgroups after a while.
	rss, err := peakRSS(ctx, root, base, logs)
	if err != nil {
		return err
	}
	rows = append(rows, row{fmt.Sprintf("peak RSS after %.0f min, 500 pod cgroups", *rssMinutes),
		fmt.Sprintf("%.1f MiB", float64(rss)/1024), "< 40 MiB", passIf(rss < 40*1024)})

	printTable()
	return nil
}

func passIf(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func printTable() {
	fmt.Printf("| %-60s | %-36s | %-18s | %-4s |\n", "measure", "value", "target", "")
	fmt.Printf("|%s|%s|%s|%s|\n", strings.Repeat("-", 62), strings.Repeat("-", 38), strings.Repeat("-", 20), strings.Repeat("-", 6))
	for _, r := range rows {
		fmt.Printf("| %-60s | %-36s | %-18s | %-4s |\n", r.what, r.value, r.target, r.verdict)
	}
}

// paired runs measure untraced and traced in alternating order and returns
// the median ratio and the median values.
func paired(ctx context.Context, start func() (func(), error), measure func() (float64, error)) (ratio, plain, traced float64, err error) {
	var ratios, plains, traceds []float64
	for i := 0; i < *pairs; i++ {
		var p, t float64
		traceRun := func() error {
			stop, err := start()
			if err != nil {
				return err
			}
			defer stop()
			t, err = measure()
			return err
		}
		plainRun := func() (err error) { p, err = measure(); return err }
		order := []func() error{plainRun, traceRun}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, f := range order {
			if ctx.Err() != nil {
				return 0, 0, 0, ctx.Err()
			}
			if err := f(); err != nil {
				return 0, 0, 0, err
			}
		}
		ratios, plains, traceds = append(ratios, t/p), append(plains, p), append(traceds, t)
	}
	return median(ratios), median(plains), median(traceds), nil
}

// storm runs `storm churn` pinned to CPU 1 and returns creations per second.
func storm(kind, cgroup string) (float64, error) {
	out, err := exec.Command("taskset", "-c", "1", *stormBin, "churn", "--kind", kind,
		"--duration", stormSecs.String(), "--cgroup", cgroup).Output()
	if err != nil {
		return 0, fmt.Errorf("storm churn: %w", err)
	}
	var r struct{ Created int }
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, err
	}
	return float64(r.Created) / stormSecs.Seconds(), nil
}

type forkwatch struct {
	cmd   *exec.Cmd
	out   *bytes.Buffer
	ready string
}

func launch(ctx context.Context, logs string, args ...string) (*forkwatch, error) {
	dir, _ := os.MkdirTemp("", "forkwatch-bench-")
	fw := &forkwatch{out: new(bytes.Buffer), ready: filepath.Join(dir, "ready")}
	fw.cmd = exec.CommandContext(ctx, *forkwatchBin, append(args, "--pod-logs-dir", logs, "--ready-file", fw.ready)...)
	fw.cmd.Stdout = fw.out
	fw.cmd.Stderr = io.Discard
	if err := fw.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(fw.ready); err == nil {
			return fw, nil
		}
		if time.Now().After(deadline) {
			fw.cmd.Process.Kill()
			return nil, fmt.Errorf("forkwatch did not attach")
		}
	}
}

func (fw *forkwatch) stop() {
	fw.cmd.Process.Signal(syscall.SIGTERM)
	fw.cmd.Wait()
}

func startForkwatch(ctx context.Context, logs string, args ...string) (func(), error) {
	fw, err := launch(ctx, logs, args...)
	if err != nil {
		return nil, err
	}
	return fw.stop, nil
}

func startBpftrace() (func(), error) {
	cmd := exec.Command("bpftrace", "-e", "tracepoint:sched:sched_process_fork { @[cgroup] = count(); }")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "Attaching") {
			break
		}
	}
	go io.Copy(io.Discard, out)
	return func() { cmd.Process.Signal(syscall.SIGINT); cmd.Wait() }, nil
}

// failureStorm fills a cgroup and has 4 processes retry forks against it;
// it returns the failure rate and what forkwatch reported and lost.
func failureStorm(ctx context.Context, root, base, logs string, ringSize int) (rate float64, reported, lost, failures int, err error) {
	cg := filepath.Join(base, "failures-"+randHex(2))
	mkdirs(root, cg)
	os.WriteFile(filepath.Join(cg, "pids.max"), []byte("64"), 0)
	fw, err := launch(ctx, logs, "-o", "json", "--ring-buffer-size", strconv.Itoa(ringSize))
	if err != nil {
		return
	}
	const procs, attempts = 4, 100000
	cmds := make([]*exec.Cmd, procs)
	outs := make([]*bytes.Buffer, procs)
	begin := time.Now()
	for i := range cmds {
		outs[i] = new(bytes.Buffer)
		cmds[i] = exec.Command(*stormBin, "fill", "--cgroup", cg, "--attempts", strconv.Itoa(attempts))
		cmds[i].Stdout, cmds[i].Stdin = outs[i], strings.NewReader("")
		if err = cmds[i].Start(); err != nil {
			return
		}
	}
	for i, c := range cmds {
		if err = c.Wait(); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("storm fill: %w", err)
		}
		var s struct{ Failures int }
		json.Unmarshal(outs[i].Bytes(), &s)
		failures += s.Failures
	}
	rate = float64(failures) / time.Since(begin).Seconds()
	time.Sleep(time.Second)
	fw.stop()
	sc := bufio.NewScanner(fw.out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Event, Cgroup string
			Count         int
		}
		json.Unmarshal(sc.Bytes(), &e)
		switch {
		case e.Event == "fork_failed" && strings.HasSuffix(cg, e.Cgroup):
			reported++
		case e.Event == "events_lost":
			lost += e.Count
		}
	}
	return
}

func procCPU(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return float64(u+s) / 100 // clock ticks
}

// cpuPerEvents measures forkwatch's CPU (share of a core) during a thread
// storm, and the storm's creation rate.
func cpuPerEvents(ctx context.Context, ctr, logs string) (cpu, rate float64, err error) {
	fw, err := launch(ctx, logs, "-o", "json")
	if err != nil {
		return
	}
	defer fw.stop()
	time.Sleep(time.Second)
	before, t0 := procCPU(fw.cmd.Process.Pid), time.Now()
	if rate, err = storm("thread", ctr); err != nil {
		return
	}
	return (procCPU(fw.cmd.Process.Pid) - before) / time.Since(t0).Seconds(), rate, nil
}

func timeToAttach(ctx context.Context, logs string) (time.Duration, error) {
	t0 := time.Now()
	fw, err := launch(ctx, logs, "-o", "json")
	if err != nil {
		return 0, err
	}
	d := time.Since(t0)
	fw.stop()
	return d, nil
}

// peakRSS runs forkwatch with metrics for rss-minutes while 500 pod
// cgroups exist and see short-lived tasks, scraping every 5 s.
func peakRSS(ctx context.Context, root, base, logs string) (int, error) {
	var cgs []string
	for i := 0; i < 500; i++ {
		cg := filepath.Join(base, "kubepods", "besteffort", "pod"+newUID(), randHex(32))
		mkdirs(root, cg)
		cgs = append(cgs, cg)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	fw, err := launch(ctx, logs, "-o", "json", "--metrics-addr", addr)
	if err != nil {
		return 0, err
	}
	defer fw.stop()
	end := time.Now().Add(time.Duration(*rssMinutes * float64(time.Minute)))
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		exec.Command(*stormBin, "churn", "--kind", "process", "--duration", "1ms", "--cgroup", cgs[i%len(cgs)]).Run()
		if i%50 == 0 {
			if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", fw.cmd.Process.Pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strconv.Atoi(strings.Fields(v)[0])
		}
	}
	return 0, fmt.Errorf("no VmHWM")
}

func mkdirs(root, dir string) {
	os.MkdirAll(dir, 0o755)
	if root == "/sys/fs/cgroup" { // v2: enable pids top-down
		rel, _ := filepath.Rel(root, dir)
		p := root
		for _, c := range strings.Split(rel, "/") {
			os.WriteFile(filepath.Join(p, "cgroup.subtree_control"), []byte("+pids"), 0)
			p = filepath.Join(p, c)
		}
	}
}

// removeTree kills what is left in the bench's cgroups and removes them,
// deepest first.
func removeTree(top string) {
	var dirs []string
	filepath.Walk(top, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		b, _ := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for try := 0; try < 50 && os.Remove(dirs[i]) != nil; try++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newUID() string {
	h := randHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func countCores() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
