package main

import (
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// prestartedThreads is how many OS threads forkwatch creates at start: the
// ring-buffer reader blocked in epoll, the ticker, the metrics server, the
// garbage collector's workers on every P, and spares for blocking syscalls
// (a scrape reads cgroup files while the sampler does the same).
func prestartedThreads() int { return 8 + 2*runtime.GOMAXPROCS(0) }

var prestartOnce sync.Once

// prestartThreads makes the Go runtime create its OS threads now. forkwatch
// runs when the node is out of PIDs, and a Go program that needs a new
// thread then dies with "failed to create new OS thread" like the daemons
// it is watching. Goroutines locked to their threads force one thread each;
// unlocked again, the threads park in the runtime's idle list for reuse.
func prestartThreads() {
	prestartOnce.Do(func() {
		var started, release sync.WaitGroup
		n := prestartedThreads()
		started.Add(n)
		release.Add(1)
		var done sync.WaitGroup
		done.Add(n)
		for i := 0; i < n; i++ {
			go func() {
				defer done.Done()
				runtime.LockOSThread()
				started.Done()
				release.Wait()
				runtime.UnlockOSThread()
			}()
		}
		started.Wait()
		release.Done()
		done.Wait()
	})
}

// hostPIDNamespace is the inode of forkwatch's own PID namespace (the node's,
// when it runs on the host or with hostPID), or 0 if unknown.
func hostPIDNamespace() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0
	}
	return st.Ino
}
