// Command storm reproduces, for forkwatch's tests and benchmarks, what takes
// nodes down: a process that forks until a PID limit refuses it, threads
// leaking until the limit is gone, create/exit storms.
//
//	storm fill [--cgroup DIR | --into DIR] [--uid U --nproc N] [--pidns --pid-max N] [--attempts K] [--max M] [--rmdir]
//	    Forks sleeping children until fork fails (or M are alive), then tries
//	    K more forks, each a single clone(2) whose failure is counted. Prints a
//	    JSON summary on stdout, then holds the children until stdin closes or
//	    SIGTERM, kills and reaps them. With --rmdir it instead releases them at
//	    once, moves itself to the parent cgroup and removes DIR: a container
//	    that dies right after its forks failed. With --into (cgroup v2), the
//	    storm stays where it is and each fork is a clone3(2) placing the child
//	    in DIR (CLONE_INTO_CGROUP), as container runtimes start processes.
//	storm threads --count N [--cgroup DIR]
//	    Starts N OS threads through the Go runtime and holds them, like a Java
//	    or Go service leaking threads. When the runtime cannot create one it
//	    dies with "failed to create new OS thread", as calico-node does.
//	storm leak --after D --rate N [--duration D] [--cgroup DIR]
//	    Creates and ends a few threads a second, then after D starts leaking:
//	    N threads a second that never exit. Prints when the leak began.
//	storm churn --duration D [--kind thread|process] [--cgroup DIR]
//	    Creates and ends threads (or forks and reaps processes) as fast as one
//	    core allows; prints the count.
//	storm syscalls --duration D
//	    Makes the cheapest system call (getppid) in a loop on one thread;
//	    prints the count. What a tracer adds to every syscall of every task
//	    shows here undiluted.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: storm fill|threads|churn [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "fill":
		err = fill(os.Args[2:])
	case "threads":
		err = threads(os.Args[2:])
	case "churn":
		err = churn(os.Args[2:])
	case "leak":
		err = leak(os.Args[2:])
	case "syscalls":
		err = syscalls(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

// Summary is what fill prints.
type Summary struct {
	PID      int            `json:"pid"`      // the forking process, as its PID namespace sees it
	TID      int            `json:"tid"`      // the thread that forks (the Go runtime's own threads may fail to start too)
	Filled   int            `json:"filled"`   // children alive when the attempts started
	Attempts int            `json:"attempts"` // forks tried after filling
	Failures int            `json:"failures"` // forks that failed, in total (filling included)
	Errnos   map[string]int `json:"errnos"`
}

// joinCgroup moves the storm into dir. It first has Go's runtime create a
// few spare OS threads (startSpareThreads): once the cgroup is full the
// runtime cannot, and would die of it (as the services forkwatch watches do)
// before the storm has reported what it saw.
func joinCgroup(dir string) error {
	if dir == "" {
		return nil
	}
	startSpareThreads()
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
}

// startSpareThreads has the Go runtime start a few OS threads and leave them
// idle, for when it needs one at the limit the storm is about to fill.
func startSpareThreads() {
	var started, done sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < 8; i++ {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			started.Done()
			<-release
			runtime.UnlockOSThread()
		}()
	}
	started.Wait()
	close(release)
	done.Wait()
}

func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	cgroup := fs.String("cgroup", "", "join this cgroup directory first")
	uid := fs.Int("uid", -1, "drop to this uid (and gid) first")
	nproc := fs.Int("nproc", -1, "set RLIMIT_NPROC to this first")
	pidns := fs.Bool("pidns", false, "run as PID 1 of a new PID namespace")
	pidMax := fs.Int("pid-max", 0, "with --pidns: the namespace's kernel.pid_max")
	attempts := fs.Int("attempts", 20, "forks to try once full")
	max := fs.Int("max", 100000, "stop filling at this many children")
	rmdir := fs.Bool("rmdir", false, "remove --cgroup right after the failures")
	into := fs.String("into", "", "fork with clone3(CLONE_INTO_CGROUP) into this cgroup v2 directory")
	_ = fs.Parse(args)

	// Everything after this point must not need a new OS thread: the
	// process is about to be at its limit. One thread does every fork, so a
	// burst of failures comes from one tid, as a Go runtime's retries do.
	runtime.GOMAXPROCS(1)
	runtime.LockOSThread()
	if *cgroup == "" {
		// As PID 1 of its own PID namespace (see runInPIDNamespace) the
		// storm fills the namespace's pid_max, not a cgroup: spares too.
		startSpareThreads()
	}

	if *pidns {
		return runInPIDNamespace(*cgroup, fs)
	}
	if err := joinCgroup(*cgroup); err != nil {
		return err
	}
	if *pidMax > 0 {
		if err := os.WriteFile("/proc/sys/kernel/pid_max", []byte(strconv.Itoa(*pidMax)), 0); err != nil {
			return fmt.Errorf("setting pid_max: %w", err)
		}
	}
	if *nproc >= 0 {
		lim := unix.Rlimit{Cur: uint64(*nproc), Max: uint64(*nproc)}
		if err := unix.Setrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
			return fmt.Errorf("setrlimit: %w", err)
		}
	}
	if *uid >= 0 {
		if err := syscall.Setgid(*uid); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
		if err := syscall.Setuid(*uid); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}

	fork := rawFork
	if *into != "" {
		dir, err := unix.Open(*into, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("--into: %w", err)
		}
		defer unix.Close(dir)
		fork = func() (uintptr, syscall.Errno) { return rawForkInto(dir) }
	}
	s := Summary{PID: os.Getpid(), TID: unix.Gettid(), Errnos: map[string]int{}}
	var children []int
	for len(children) < *max {
		pid, errno := fork()
		if errno != 0 {
			s.Failures++
			s.Errnos[unix.ErrnoName(errno)]++
			break
		}
		children = append(children, int(pid))
	}
	s.Filled = len(children)
	for i := 0; i < *attempts; i++ {
		s.Attempts++
		pid, errno := fork()
		if errno != 0 {
			s.Failures++
			s.Errnos[unix.ErrnoName(errno)]++
			continue
		}
		children = append(children, int(pid)) // a slot freed up: keep it full
	}

	if *rmdir {
		release(children)
		// Leave for the hierarchy's root: on cgroup v2 the parent may not
		// hold processes once it delegates controllers to children.
		if err := os.WriteFile(filepath.Join(hierarchyRoot(*cgroup), "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return err
		}
		if err := os.Remove(*cgroup); err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(s)
	}
	if err := json.NewEncoder(os.Stdout).Encode(s); err != nil {
		release(children)
		return err
	}
	waitForRelease()
	release(children)
	return nil
}

// hierarchyRoot is the root of the cgroup mount holding dir: the topmost
// directory above it that still has cgroup.procs.
func hierarchyRoot(dir string) string {
	for {
		up := filepath.Dir(dir)
		if _, err := os.Stat(filepath.Join(up, "cgroup.procs")); err != nil || up == dir {
			return dir
		}
		dir = up
	}
}

// runInPIDNamespace re-runs fill as PID 1 of a new PID namespace and passes
// its output through.
func runInPIDNamespace(cgroup string, fs *flag.FlagSet) error {
	if err := joinCgroup(cgroup); err != nil {
		return err
	}
	var args []string
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "pidns" && f.Name != "cgroup" {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		}
	})
	args = append([]string{os.Args[0], "fill"}, args...)
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	pid, err := syscall.ForkExec(exe, args, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{pr.Fd(), os.Stdout.Fd(), os.Stderr.Fd()},
		Sys:   &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL},
	})
	pr.Close()
	if err != nil {
		return fmt.Errorf("starting PID namespace: %w", err)
	}
	// Hold the namespace until our own stdin closes or we are told to stop,
	// then let the child go by closing its stdin.
	waitForRelease()
	pw.Close()
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		return err
	}
	if ws.ExitStatus() != 0 {
		return fmt.Errorf("namespace child exited with %d", ws.ExitStatus())
	}
	return nil
}

// released is closed when stdin reaches EOF or SIGTERM/SIGINT arrives. It is
// set up before any limit is hit: signal.Notify starts an OS thread, which
// a process at its limit cannot.
var released = make(chan struct{})

func init() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	stdin := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdin) }()
	go func() {
		select {
		case <-sig:
		case <-stdin:
		}
		close(released)
	}()
}

func waitForRelease() { <-released }

func release(children []int) {
	for _, pid := range children {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range children {
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
	}
}

// rawFork is one clone(2) with exactly fork's semantics and no retry. The
// child only waits to be killed: it runs no Go code that could need the
// runtime (the parent's other threads do not exist in it), so this function
// must not grow the stack.
//
//go:nosplit
//go:norace
func rawFork() (uintptr, syscall.Errno) {
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	return forked(pid, errno)
}

// forked returns what a raw fork returned in the parent; in the child it
// never returns: the child sleeps until killed, and dies with the parent.
//
//go:nosplit
//go:norace
func forked(pid uintptr, errno syscall.Errno) (uintptr, syscall.Errno) {
	if errno != 0 {
		return 0, errno
	}
	if pid == 0 {
		syscall.RawSyscall6(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0, 0)
		for {
			// ppoll with no files and no timeout: pause(2),
			// which arm64 does not have.
			syscall.RawSyscall6(unix.SYS_PPOLL, 0, 0, 0, 0, 0, 0)
		}
	}
	return pid, 0
}

// cloneArgs is struct clone_args up to its cgroup field (CLONE_ARGS_SIZE_VER2).
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls, setTID, setTIDSize, cgroup uint64
}

// rawForkInto is rawFork through clone3(2), the child placed in the cgroup
// v2 directory open as dir (CLONE_INTO_CGROUP, 5.7+).
//
//go:nosplit
//go:norace
func rawForkInto(dir int) (uintptr, syscall.Errno) {
	args := cloneArgs{flags: unix.CLONE_INTO_CGROUP, exitSignal: uint64(syscall.SIGCHLD), cgroup: uint64(dir)}
	pid, _, errno := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args), 0)
	return forked(pid, errno)
}

func threads(args []string) error {
	fs := flag.NewFlagSet("threads", flag.ExitOnError)
	count := fs.Int("count", 100, "threads to start")
	cgroup := fs.String("cgroup", "", "join this cgroup directory first")
	_ = fs.Parse(args)
	if err := joinCgroup(*cgroup); err != nil {
		return err
	}
	started := make(chan struct{})
	for i := 0; i < *count; i++ {
		go func() {
			runtime.LockOSThread()
			started <- struct{}{}
			select {}
		}()
		<-started
	}
	fmt.Printf("{\"pid\":%d,\"threads\":%d}\n", os.Getpid(), *count)
	waitForRelease()
	return nil
}

func leak(args []string) error {
	fs := flag.NewFlagSet("leak", flag.ExitOnError)
	after := fs.Duration("after", 10*time.Second, "leak after this long")
	rate := fs.Int("rate", 200, "threads leaked per second")
	d := fs.Duration("duration", 20*time.Second, "total run time")
	cgroup := fs.String("cgroup", "", "join this cgroup directory first")
	_ = fs.Parse(args)
	if err := joinCgroup(*cgroup); err != nil {
		return err
	}
	start := time.Now()
	done := make(chan struct{})
	// Before the leak: ten short-lived threads a second.
	for time.Since(start) < *after {
		go func() {
			runtime.LockOSThread()
			done <- struct{}{}
		}()
		<-done
		time.Sleep(100 * time.Millisecond)
	}
	leakStart := time.Now()
	fmt.Printf("{\"pid\":%d,\"leak_start\":%q}\n", os.Getpid(), leakStart.Format(time.RFC3339Nano))
	started := make(chan struct{})
	for n := 0; time.Since(start) < *d; n++ {
		go func() {
			runtime.LockOSThread()
			started <- struct{}{}
			<-released
		}()
		<-started
		// Pace to rate threads per second.
		if ahead := time.Duration(n+1)*time.Second/time.Duration(*rate) - time.Since(leakStart); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	return nil
}

func churn(args []string) error {
	fs := flag.NewFlagSet("churn", flag.ExitOnError)
	d := fs.Duration("duration", 5*time.Second, "how long")
	kind := fs.String("kind", "thread", "thread or process")
	cgroup := fs.String("cgroup", "", "join this cgroup directory first")
	_ = fs.Parse(args)
	if err := joinCgroup(*cgroup); err != nil {
		return err
	}
	deadline := time.Now().Add(*d)
	n := 0
	switch strings.ToLower(*kind) {
	case "thread":
		done := make(chan struct{})
		for time.Now().Before(deadline) {
			for i := 0; i < 100; i++ {
				// A goroutine that exits while locked to its thread takes
				// the thread with it: one clone(CLONE_THREAD) and one exit.
				go func() {
					runtime.LockOSThread()
					done <- struct{}{}
				}()
				<-done
			}
			n += 100
		}
	case "process":
		for time.Now().Before(deadline) {
			pid, errno := rawFork()
			if errno != 0 {
				return errno
			}
			_ = syscall.Kill(int(pid), syscall.SIGKILL)
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(int(pid), &ws, 0, nil)
			n++
		}
	default:
		return fmt.Errorf("unknown --kind %q", *kind)
	}
	fmt.Printf("{\"pid\":%d,\"created\":%d}\n", os.Getpid(), n)
	return nil
}

func syscalls(args []string) error {
	fs := flag.NewFlagSet("syscalls", flag.ExitOnError)
	d := fs.Duration("duration", 2*time.Second, "how long")
	_ = fs.Parse(args)
	runtime.LockOSThread()
	deadline := time.Now().Add(*d)
	n := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 10000; i++ {
			syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
		}
		n += 10000
	}
	fmt.Printf("{\"pid\":%d,\"syscalls\":%d}\n", os.Getpid(), n)
	return nil
}
