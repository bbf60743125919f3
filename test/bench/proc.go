package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cleanups run in reverse order when the bench ends, however it ends.
var (
	cleanupMu sync.Mutex
	cleanups  []func()
	children  = map[*proc]bool{}
)

func onCleanup(f func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, f)
}

// cleanup stops every child still running, then runs the cleanups.
func cleanup() {
	cleanupMu.Lock()
	left := make([]*proc, 0, len(children))
	for p := range children {
		left = append(left, p)
	}
	fs := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for _, p := range left {
		p.stop()
	}
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// proc is a child process. Each runs in its own process group, so that a
// Ctrl-C on the terminal reaches only the bench, which stops them in order;
// and each dies with the bench if the bench is killed outright.
type proc struct {
	cmd     *exec.Cmd
	stderr  bytes.Buffer
	done    chan struct{}
	err     error
	stopSig syscall.Signal
}

func newProc(stdout io.Writer, name string, args ...string) *proc {
	p := &proc{done: make(chan struct{}), stopSig: syscall.SIGTERM}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout = stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return p
}

func (p *proc) start() error {
	if err := p.cmd.Start(); err != nil {
		return err
	}
	cleanupMu.Lock()
	children[p] = true
	cleanupMu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		cleanupMu.Lock()
		delete(children, p)
		cleanupMu.Unlock()
		close(p.done)
	}()
	return nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to end (SIGTERM, or its stopSig) and kills it if
// it has not within 10 s.
func (p *proc) stop() error {
	if p.exited() {
		return p.err
	}
	_ = p.cmd.Process.Signal(p.stopSig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// wait waits for the process to exit by itself; ctx ending stops it.
func (p *proc) wait(ctx context.Context) error {
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s: %v: %s", filepath.Base(p.cmd.Path), p.err, strings.TrimSpace(p.stderr.String()))
		}
		return nil
	case <-ctx.Done():
		p.stop()
		return ctx.Err()
	}
}

// runOutput runs a command to completion and returns its stdout.
func runOutput(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	p := newProc(&out, name, args...)
	if err := p.start(); err != nil {
		return nil, err
	}
	if err := p.wait(ctx); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// forkwatch is a running forkwatch.
type forkwatch struct {
	*proc
	attach time.Duration // exec to --ready-file
}

// startForkwatch starts forkwatch with args, its stdout to out (nil:
// /dev/null), and returns once every probe is attached: its --ready-file
// exists.
func startForkwatch(ctx context.Context, e *env, out io.Writer, args ...string) (*forkwatch, error) {
	return startForkwatchWith(ctx, e, out, fwOpts{}, args...)
}

type fwOpts struct {
	memcg string   // a memory cgroup to start it in, so that all it allocates is charged there
	env   []string // added to its environment
}

func startForkwatchWith(ctx context.Context, e *env, out io.Writer, o fwOpts, args ...string) (*forkwatch, error) {
	ready := filepath.Join(e.tmp, "ready-"+randHex(4))
	args = append(args, "--pod-logs-dir", e.podLogs, "--ready-file", ready)
	if *mode != "" {
		args = append(args, "--mode", *mode)
	}
	name := *forkwatchBin
	if o.memcg != "" {
		// The shell joins the cgroup and execs forkwatch: same PID, and
		// nothing forkwatch allocates is charged elsewhere.
		args = append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, o.memcg, name}, args...)
		name = "/bin/sh"
	}
	p := newProc(out, name, args...) // nil out: os/exec gives it /dev/null
	if len(o.env) > 0 {
		p.cmd.Env = append(os.Environ(), o.env...)
	}
	t0 := time.Now()
	if err := p.start(); err != nil {
		return nil, err
	}
	for deadline := t0.Add(30 * time.Second); ; {
		if _, err := os.Stat(ready); err == nil {
			return &forkwatch{proc: p, attach: time.Since(t0)}, nil
		}
		if p.exited() {
			return nil, fmt.Errorf("forkwatch %s exited before attaching: %v: %s", strings.Join(args, " "), p.err, strings.TrimSpace(p.stderr.String()))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			p.stop()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("forkwatch did not attach within 30 s: %s", p.stderr.String())
		}
		time.Sleep(time.Millisecond)
	}
}

// stopClean stops forkwatch and says if it did not exit cleanly.
func (fw *forkwatch) stopClean() error {
	if err := fw.stop(); err != nil {
		return fmt.Errorf("forkwatch exited with %v: %s", err, strings.TrimSpace(fw.stderr.String()))
	}
	return nil
}

// startBpftrace runs the peer one-liner and returns once it has attached.
func startBpftrace(ctx context.Context, program string) (*proc, error) {
	path, err := exec.LookPath("bpftrace")
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p := newProc(pw, path, "-e", program)
	p.stopSig = syscall.SIGINT // prints its map and detaches
	err = p.start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	attached := make(chan struct{})
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			if !once && strings.HasPrefix(sc.Text(), "Attaching") {
				once = true
				close(attached)
			}
		}
	}()
	select {
	case <-attached:
		// "Attaching N probes..." is printed before the attach calls;
		// give them a moment to complete.
		time.Sleep(200 * time.Millisecond)
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("bpftrace exited: %v: %s", p.err, p.stderr.String())
	case <-time.After(60 * time.Second):
		p.stop()
		return nil, errors.New("bpftrace did not attach within 60 s")
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// cpuTicks is the process's user+sys from /proc/<pid>/stat, in ns: the
// kernel's exact run time, printed in 10 ms clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return (u + s) * int64(time.Second) / 100, nil // USER_HZ
}

// status reads a kB field of /proc/<pid>/status (VmRSS, VmHWM).
func status(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// modeNote names the mode forced with -mode, for the table.
func modeNote() string {
	if *mode == "" {
		return ""
	}
	return ", --mode " + *mode
}
