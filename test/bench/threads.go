package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/forkwatch/forkwatch/output/node/threads"
)

var flaggedThreads = flag.Int("flagged-threads", 2000, "threads section: threads of the flagged pod whose threads forkwatch reads every second")

// flaggedCost measures what reading a flagged pod's threads costs
// forkwatch: one forkwatch, one pod of --flagged-threads named threads,
// its CPU over --cpu-time while the pod is steady (not flagged: nothing
// is read), then while it is flagged (its threads read every second). The
// pod is flagged by the headroom rule: it starts 2 threads a second 400
// below its pids.max.
func flaggedCost(ctx context.Context, e *env, t *table) error {
	podDir, ctr, err := e.fakePod("burstable", "bench", "leaky-0")
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	p := newProc(pw, e.self, "worker-threads", "--cgroup", ctr, "--threads", strconv.Itoa(*flaggedThreads), "--leak-rate", "2")
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		return err
	}
	err = p.start()
	pw.Close()
	if err != nil {
		pr.Close()
		return err
	}
	w := &failWorkerProc{p: p, stdin: stdin, out: bufio.NewReader(pr)}
	defer func() {
		w.stdin.Close()
		w.p.stop()
	}()
	if l, err := readLine(ctx, w); err != nil || l != "ready" {
		return fmt.Errorf("threads worker: %q %v: %s", l, err, w.p.stderr.String())
	}
	cur, err := readInt(filepath.Join(podDir, "pids.current"))
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(podDir, "pids.max"), strconv.FormatInt(cur+400, 10)); err != nil {
		return err
	}

	busy := ""
	if !waitQuiet(ctx) {
		busy = " [measured on a busy machine]"
	}
	// What a reading costs, as forkwatch's sampler reads, in the bench's
	// own process: the first, which reads every thread's name, then the
	// median of --pairs more, a round apart, which read the new threads'
	// names and a tenth of the others'.
	var r threads.Reader
	var rd threads.Reading
	var took []float64
	for i := 0; i <= *pairs; i++ {
		rd.Reset()
		t0 := time.Now()
		if err := r.Cgroup(podDir, &rd); err != nil {
			return err
		}
		took = append(took, time.Since(t0).Seconds())
		r.EndRound()
	}
	first, then := took[0], median(took[1:])
	t.add(fmt.Sprintf("reading the threads of a pod of %d threads (its cgroup.procs, /proc/PID/task/, the names)", rd.Threads),
		fmt.Sprintf("%.1f ms (%.1f µs a thread) a reading; the first, every name read: %.1f ms (%.1f µs)%s",
			then*1e3, then*1e6/float64(rd.Threads), first*1e3, first*1e6/float64(rd.Threads), busy), "", "")

	out, err := os.CreateTemp(e.tmp, "flagged-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	fw, err := startForkwatch(ctx, e, out, "-o", "json")
	if err != nil {
		return err
	}
	defer fw.stop()
	if err := sleepCtx(ctx, 12*time.Second); err != nil {
		return err
	}
	progress("forkwatch CPU, a pod of %d threads not flagged, %s", cur, *cpuTime)
	c0, w0 := mustCPU(fw.pid()), time.Now()
	if err := sleepCtx(ctx, *cpuTime); err != nil {
		return err
	}
	steady := float64(mustCPU(fw.pid())-c0) / float64(time.Since(w0))

	if _, err := w.stdin.Write([]byte("leak\n")); err != nil {
		return err
	}
	spike, err := waitSpike(ctx, out.Name(), 60*time.Second)
	if err != nil {
		return err
	}
	progress("forkwatch CPU, the pod flagged (%s), %s", spike, *cpuTime)
	c1, w1 := mustCPU(fw.pid()), time.Now()
	if err := sleepCtx(ctx, *cpuTime); err != nil {
		return err
	}
	flagged := float64(mustCPU(fw.pid())-c1) / float64(time.Since(w1))
	if err := fw.stopClean(); err != nil {
		return err
	}
	t.add(fmt.Sprintf("forkwatch CPU with a flagged pod of %d threads (read every second, less often past 2%% of a core)", cur),
		fmt.Sprintf("%.2f%% of a core (the same pod not flagged: %.2f%%): %.1f ms a second for its threads%s",
			flagged*100, steady*100, max(0, flagged-steady)*1e3, busy),
		"", "")
	return nil
}

// waitSpike waits for forkwatch's JSON Lines in file to hold a spike start
// naming the worker's pool among its groups of threads, and describes it.
func waitSpike(ctx context.Context, file string, limit time.Duration) (string, error) {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		for _, l := range bytes.Split(b, []byte("\n")) {
			var s struct {
				Event, State, Reason string
				Threads              []struct {
					Name  string
					Count int
				}
			}
			if json.Unmarshal(l, &s) != nil || s.Event != "spike" || s.State != "start" {
				continue
			}
			// The Go runtime of the worker starts a thread of its own
			// now and then: its pool need not be first.
			for _, g := range s.Threads {
				if g.Name == "pool-*-thread-*" {
					return fmt.Sprintf("%s, %s ×%d", s.Reason, g.Name, g.Count), nil
				}
			}
			return "", fmt.Errorf("the flagged pod's spike names %+v, not its pool", s.Threads)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return "", err
		}
	}
	return "", errors.New("the pod was not flagged within a minute")
}

// threadsWorker joins --cgroup, starts --threads OS threads named as a
// JVM's pool names them (pool-1-thread-1000, … as the kernel keeps them:
// pool-1-thread-1), prints "ready", and once it reads a line on stdin
// starts --leak-rate more a second, until stdin closes. Each is a
// goroutine locked to its thread, blocked for good.
func threadsWorker(args []string) error {
	fs := flag.NewFlagSet("worker-threads", flag.ContinueOnError)
	cgroup := fs.String("cgroup", "", "cgroup directory to join")
	n := fs.Int("threads", 2000, "threads to start")
	rate := fs.Int("leak-rate", 2, "threads started a second once told")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*cgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return err
	}
	next := 1000
	named := make(chan bool)
	start := func() {
		name := append([]byte(fmt.Sprintf("pool-1-thread-%d", next)), 0)
		next++
		go func() {
			runtime.LockOSThread()
			if unix.Gettid() == unix.Getpid() {
				named <- false // the main thread keeps the process's name
			} else {
				named <- unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0) == nil
			}
			select {}
		}()
	}
	for i := 0; i < *n; {
		start()
		if <-named {
			i++
		}
	}
	fmt.Println("ready")
	line := make(chan error)
	go func() {
		_, err := bufio.NewReader(os.Stdin).ReadString('\n')
		line <- err
		_, err = bufio.NewReader(os.Stdin).ReadString('\n')
		line <- err
	}()
	if err := <-line; err != nil {
		return nil // the bench went away
	}
	tick := time.NewTicker(time.Second / time.Duration(max(1, *rate)))
	for {
		select {
		case <-line:
			return nil
		case <-tick.C:
			start()
			<-named
		}
	}
}
