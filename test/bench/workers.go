package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The bench's load generators are copies of the bench itself, started as
// "bench worker-fail …" or "bench worker-churn …".
func worker(role string, args []string) int {
	var err error
	switch role {
	case "worker-fail":
		err = failWorker(args)
	case "worker-churn":
		err = churnWorker(args)
	case "worker-touch":
		err = touchWorker(args)
	case "worker-threads":
		err = threadsWorker(args)
	default:
		err = fmt.Errorf("unknown worker %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench", role+":", err)
		return 1
	}
	return 0
}

// cloneThreadFlags are the flags Go's runtime (and glibc's pthread_create)
// pass to clone(2) for a new thread: a failure storm of these is what a Go
// daemon at a full pids cgroup does before it dies of "failed to create new
// OS thread".
const cloneThreadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_SYSVSEM | unix.CLONE_THREAD

// failWorker retries clone(2) for new threads in a tight loop, at a full
// pids cgroup. A thread clone shares the address space, so a failing one
// costs the kernel little: the generator is not what limits the rate, as it
// is with fork(2), which copies the caller's page tables before the pids
// charge refuses it.
//
// Protocol with the bench: it joins --cgroup, prints "ready", waits for a
// line on stdin (the bench has set the cgroup's pids.max to its current
// count meanwhile), retries for --duration at --rate attempts/s (0: flat
// out), prints {"failures":N,"created":M,"ns":T}, and exits when stdin
// closes. From the moment the cgroup is full it must not need a new OS
// thread, so it uses raw syscalls only, on one locked thread with every
// signal blocked.
func failWorker(args []string) error {
	fs := flag.NewFlagSet("worker-fail", flag.ContinueOnError)
	cgroup := fs.String("cgroup", "", "cgroup directory to join")
	rate := fs.Int("rate", 0, "clone attempts per second, 0 for as fast as possible")
	d := fs.Duration("duration", 2*time.Second, "how long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !haveCloneLoop {
		return fmt.Errorf("the failure storm's clone loop is written for amd64, not %s", runtime.GOARCH)
	}
	runtime.GOMAXPROCS(1)
	runtime.LockOSThread()
	spareThreads()
	// Blocked here, every signal stays pending on this thread instead of
	// running a Go handler; a thread clone that does succeed (a slot freed
	// up) inherits the mask and exits at once.
	all := unix.Sigset_t{Val: [16]uint64{^uint64(0)}}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, nil); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*cgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return err
	}
	rawWrite(1, []byte("ready\n"))
	var b [64]byte
	if n := rawRead(0, b[:]); n <= 0 {
		return nil // the bench went away
	}

	batch := 64
	if *rate > 0 {
		batch = max(8, *rate/2000)
	}
	var failed, created, attempts int
	start := time.Now()
	for {
		now := time.Since(start)
		if now >= *d {
			break
		}
		if *rate > 0 {
			due := time.Duration(int64(attempts) * int64(time.Second) / int64(*rate))
			if due > now {
				rawSleep(due - now)
				continue
			}
		}
		f, c := cloneLoop(cloneThreadFlags, batch)
		failed += f
		created += c
		attempts += batch
	}
	elapsed := time.Since(start)
	out := b[:0]
	out = append(out, `{"failures":`...)
	out = strconv.AppendInt(out, int64(failed), 10)
	out = append(out, `,"created":`...)
	out = strconv.AppendInt(out, int64(created), 10)
	out = append(out, `,"ns":`...)
	out = strconv.AppendInt(out, int64(elapsed), 10)
	out = append(out, "}\n"...)
	rawWrite(1, out)
	for rawRead(0, b[:]) > 0 {
	}
	return nil
}

// spareThreads has Go's runtime start a few OS threads and keep them idle,
// while it still can: once the cgroup is full it could not, and would die.
func spareThreads() {
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

func rawWrite(fd int, b []byte) {
	for len(b) > 0 {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return
		}
		b = b[n:]
	}
}

func rawRead(fd int, b []byte) int {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return -1
		}
		return int(n)
	}
}

func rawSleep(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// churnWorker creates and ends threads at --rate per second for --duration,
// in --cgroup, and prints {"created":N,"ns":T}. Each is one clone of a new
// OS thread and its exit: a goroutine that exits while locked to its thread
// takes the thread with it, and the next needs a new one.
func churnWorker(args []string) error {
	fs := flag.NewFlagSet("worker-churn", flag.ContinueOnError)
	cgroup := fs.String("cgroup", "", "cgroup directory to join")
	rate := fs.Int("rate", 20000, "threads created per second")
	d := fs.Duration("duration", 10*time.Second, "how long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rate <= 0 {
		return fmt.Errorf("--rate must be positive")
	}
	if *cgroup != "" {
		if err := os.WriteFile(filepath.Join(*cgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	const batch = 20
	n := 0
	start := time.Now()
	for {
		now := time.Since(start)
		if now >= *d {
			break
		}
		if due := time.Duration(int64(n) * int64(time.Second) / int64(*rate)); due > now {
			time.Sleep(due - now)
			continue
		}
		for i := 0; i < batch; i++ {
			go func() {
				runtime.LockOSThread()
				done <- struct{}{}
			}()
			<-done
		}
		n += batch
	}
	fmt.Printf("{\"created\":%d,\"ns\":%d}\n", n, time.Since(start))
	return nil
}

// touchWorker joins each cgroup named in the file --cgroups (one a line) in
// turn and creates and ends one thread there: every pod then has counters in
// forkwatch's kernel map, as on a node where every pod has started a task
// since forkwatch attached.
func touchWorker(args []string) error {
	fs := flag.NewFlagSet("worker-touch", flag.ContinueOnError)
	list := fs.String("cgroups", "", "file naming one cgroup directory a line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*list)
	if err != nil {
		return err
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	done := make(chan struct{})
	for _, dir := range strings.Fields(string(b)) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
			return err
		}
		go func() {
			runtime.LockOSThread()
			done <- struct{}{}
		}()
		<-done
	}
	return nil
}
