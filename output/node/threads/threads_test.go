package threads

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestFold(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"pool-3-thread-17", "pool-*-thread-*"},
		// The kernel keeps 15 bytes: pool-3-thread-1234 arrives cut in
		// its last digit run, pool-12-thread-5 before it.
		{"pool-3-thread-1", "pool-*-thread-*"},
		{"pool-12-thread-", "pool-*-thread-*"},
		{"pool-3-thread-", "pool-*-thread-"}, // 14 bytes: named so, not cut
		{"GC Thread#0", "GC Thread#*"},
		{"C2 CompilerThre", "C* CompilerThre*"}, // C2 CompilerThread0
		{"grpc-default-ex", "grpc-default-ex*"},
		{"java", "java"},
		{"2024", "*"},
		{"a1b22c333", "a*b*c*"},
		{"", ""},
	} {
		if got := string(Fold(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("Fold(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// Every name a JVM gives the threads of its first 99 pools, as the
	// kernel keeps it, folds into one group (see TestReaderMergesCut for
	// the pools after).
	groups := map[string]bool{}
	for pool := 1; pool <= 99; pool++ {
		for thread := 1; thread <= 2000; thread += 7 {
			name := fmt.Sprintf("pool-%d-thread-%d", pool, thread)
			if len(name) > CommLen {
				name = name[:CommLen]
			}
			groups[string(Fold(nil, []byte(name)))] = true
		}
	}
	if len(groups) != 1 || !groups["pool-*-thread-*"] {
		t.Errorf("a JVM pool's names folded into %v, want pool-*-thread-* only", groups)
	}
}

// fakeProc lays out a proc filesystem: pid → comm, and its threads' names.
func fakeProc(t *testing.T, procs map[int][]string, comms map[int]string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for pid, names := range procs {
		write(fmt.Sprintf("%d/comm", pid), comms[pid]+"\n")
		for i, n := range names {
			write(fmt.Sprintf("%d/task/%d/comm", pid, pid+i), n+"\n")
		}
	}
	return dir
}

func TestReaderGroups(t *testing.T) {
	names := []string{"java"} // the main thread
	for i := 1; i <= 40; i++ {
		names = append(names, fmt.Sprintf("pool-3-thread-%d", 1200+i)[:CommLen])
	}
	names = append(names, "GC Thread#0", "GC Thread#1", "java", "java", "C2 CompilerThre")
	proc := fakeProc(t, map[int][]string{
		4121: names,
		77:   {"app3", "app3", "worker-1"}, // unnamed threads of a process whose name has a digit
	}, map[int]string{4121: "java", 77: "app3"})

	r := &Reader{Proc: proc}
	var rd Reading
	for _, pid := range []int{4121, 77, 99999} { // 99999: gone
		if err := r.Process(pid, &rd); err != nil {
			t.Fatal(err)
		}
	}
	Rank(rd.Groups)
	got := map[string]int{}
	for _, g := range rd.Groups {
		got[fmt.Sprintf("%s[%d] %s", g.Comm, g.PID, g.Name)] = g.Count
	}
	want := map[string]int{
		"java[4121] pool-*-thread-*":  40,
		"java[4121] java":             3, // the main thread and two never named
		"java[4121] GC Thread#*":      2,
		"java[4121] C* CompilerThre*": 1,
		"app3[77] app3":               2,
		"app3[77] worker-*":           1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("groups %v\nwant   %v", got, want)
	}
	if rd.Threads != len(names)+3 || rd.Processes != 2 {
		t.Fatalf("read %d threads in %d processes, want %d in 2", rd.Threads, rd.Processes, len(names)+3)
	}
	if rd.Groups[0].Name != "pool-*-thread-*" {
		t.Fatalf("largest group first: %+v", rd.Groups)
	}
}

// A service creating a new pool per request (the classic leak) numbers its
// pools past 99, where the kernel cuts the name before the thread number
// and then into "thread": each stem still joins the one group.
func TestReaderMergesCut(t *testing.T) {
	names := []string{"app"}
	for _, pool := range []int{7, 42, 420, 4200, 42000} {
		for thread := 1; thread <= 12; thread++ {
			n := fmt.Sprintf("pool-%d-thread-%d", pool, thread)
			names = append(names, n[:min(len(n), CommLen)])
		}
	}
	names = append(names, "pool-manager", "worker-1", "worker-22")
	proc := fakeProc(t, map[int][]string{300: names}, map[int]string{300: "app"})
	var rd Reading
	if err := (&Reader{Proc: proc}).Process(300, &rd); err != nil {
		t.Fatal(err)
	}
	Rank(rd.Groups)
	var got []string
	for _, g := range rd.Groups {
		got = append(got, fmt.Sprintf("%s ×%d", g.Name, g.Count))
	}
	want := []string{"pool-*-thread-* ×60", "worker-* ×2", "app ×1", "pool-manager ×1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("groups %q, want %q", got, want)
	}
}

func reading(groups ...Group) *Reading {
	return &Reading{Groups: groups}
}

func TestHistoryGrowth(t *testing.T) {
	h := NewHistory()
	t0 := time.Unix(1000, 0)
	var got []Group
	// A steady pool of 8, a leaking pool from 100 at +12/s, 3 unnamed.
	for s := 0; s <= 15; s++ {
		got = h.Observe("pod:1", t0.Add(time.Duration(s)*time.Second), reading(
			Group{Name: "GC Thread#*", Comm: "java", PID: 4121, Count: 8},
			Group{Name: "pool-*-thread-*", Comm: "java", PID: 4121, Count: 100 + 12*s},
			Group{Name: "java", Comm: "java", PID: 4121, Count: 3},
		))
		h.EndRound()
		if s == 0 {
			if got[0].Growth != 0 || got[0].Span != 0 || got[0].Name != "pool-*-thread-*" {
				t.Fatalf("first reading: no growth yet, largest first: %+v", got)
			}
		}
		if s == 2 {
			// Read for 2 s (a pod read from its first hot second).
			if g := got[0]; g.Name != "pool-*-thread-*" || g.Growth != 24 || g.Span != 2*time.Second || g.PerSecond() != 12 {
				t.Fatalf("after 2 s: %+v", got)
			}
		}
	}
	want := Group{Name: "pool-*-thread-*", Comm: "java", PID: 4121, Count: 280, Growth: 120, Span: 10 * time.Second}
	if got[0] != want || got[1].Name != "GC Thread#*" || got[1].Growth != 0 || got[2].Name != "java" {
		t.Fatalf("after 15 s: %+v, want %+v first", got, want)
	}

	// A group that appears counts from zero; one whose process exits is
	// no longer shown.
	got = h.Observe("pod:1", t0.Add(16*time.Second), reading(
		Group{Name: "pool-*-thread-*", Comm: "java", PID: 4121, Count: 292},
		Group{Name: "worker", Comm: "sh", PID: 5000, Count: 1},
	))
	h.EndRound()
	if len(got) != 2 || got[0].Growth != 120 || got[1].Name != "worker" || got[1].Growth != 1 {
		t.Fatalf("after a process left and one came: %+v", got)
	}
	// The process exits: nothing is left to show.
	if got = h.Observe("pod:1", t0.Add(17*time.Second), reading()); len(got) != 0 {
		t.Fatalf("pod with no process: %+v", got)
	}
	h.EndRound()

	// A pod not observed for a round is forgotten: its growth starts over.
	h.EndRound()
	if h.Len() != 0 {
		t.Fatalf("history kept %d pods not observed", h.Len())
	}
	got = h.Observe("pod:1", t0.Add(30*time.Second), reading(Group{Name: "x", Comm: "y", PID: 1, Count: 50}))
	if got[0].Growth != 0 || got[0].Span != 0 {
		t.Fatalf("a pod observed again starts over: %+v", got)
	}
}

// setThreadName names the calling OS thread as pthread_setname_np does.
func setThreadName(name string) error {
	b := append([]byte(name), 0)
	return unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0)
}

// namedThreads starts n OS threads of this process named name-<i>, held
// until release is called. The main thread, whose name is the process's,
// is never renamed: a goroutine that lands on it holds it unnamed and
// another is started.
func namedThreads(t testing.TB, n int, name string) (release func()) {
	t.Helper()
	var done sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error)
	start := func(i int) {
		done.Add(1)
		go func() {
			defer done.Done()
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			if unix.Gettid() == unix.Getpid() {
				errs <- errMainThread
			} else {
				errs <- setThreadName(fmt.Sprintf("%s-%d", name, 1000+i))
			}
			<-stop
		}()
	}
	for i := 0; i < n; i++ {
		start(i)
	}
	for named, next := 0, n; named < n; {
		switch err := <-errs; err {
		case nil:
			named++
		case errMainThread:
			start(next)
			next++
		default:
			t.Fatal(err)
		}
	}
	return func() { close(stop); done.Wait() }
}

var errMainThread = errors.New("on the main thread")

// The real /proc: this test process's own threads, named as a JVM names
// its pool's (longer than the kernel keeps).
func TestReaderProc(t *testing.T) {
	release := namedThreads(t, 50, "pool-3-thread")
	defer release()
	var r Reader
	var rd Reading
	if err := r.Process(os.Getpid(), &rd); err != nil {
		t.Fatal(err)
	}
	Rank(rd.Groups)
	comm, _ := os.ReadFile("/proc/self/comm")
	g := rd.Groups[0]
	if g.Name != "pool-*-thread-*" || g.Count != 50 || g.PID != os.Getpid() || g.Comm != strings.TrimSpace(string(comm)) {
		t.Fatalf("groups %+v: want 50 threads of pool-*-thread-* first", rd.Groups)
	}
}

// A reading costs no allocation per thread: only per process and per
// group.
func TestReaderAllocations(t *testing.T) {
	release := namedThreads(t, 200, "pool-3-thread")
	defer release()
	var r Reader
	var rd Reading
	allocs := testing.AllocsPerRun(20, func() {
		rd.Reset()
		if err := r.Process(os.Getpid(), &rd); err != nil {
			t.Fatal(err)
		}
		r.EndRound()
	})
	groups := len(rd.Groups)
	// The process's name, and per group its name and index entry.
	if max := float64(2 + 2*groups); allocs > max {
		t.Fatalf("%.0f allocations to read %d threads in %d groups, want at most %.0f", allocs, rd.Threads, groups, max)
	}
	t.Logf("%.0f allocations for %d threads in %d groups", allocs, rd.Threads, groups)
}

// BenchmarkReadProcess is what reading a 2,000-thread process's names
// costs: make bench measures it inside forkwatch.
func BenchmarkReadProcess(b *testing.B) {
	release := namedThreads(b, 2000, "pool-3-thread")
	defer release()
	var r Reader
	var rd Reading
	b.ResetTimer()
	for b.Loop() {
		rd.Reset()
		if err := r.Process(os.Getpid(), &rd); err != nil {
			b.Fatal(err)
		}
		r.EndRound()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(rd.Threads), "ns/thread")
}

// A pod read less often than every second (a large one, see the
// sampler's budget): growth over the readings of the last 10 s, or since
// the one before when they are further apart; Keep holds its history
// between readings.
func TestHistorySparse(t *testing.T) {
	h := NewHistory()
	t0 := time.Unix(1000, 0)
	var got []Group
	for s := 0; s <= 20; s++ {
		at := t0.Add(time.Duration(s) * time.Second)
		if s%4 != 0 {
			h.Keep("pod:1")
			h.EndRound()
			continue
		}
		got = h.Observe("pod:1", at, reading(Group{Name: "pool-*-thread-*", Comm: "java", PID: 1, Count: 10 * s}))
		h.EndRound()
	}
	if g := got[0]; g.Growth != 80 || g.Span != 8*time.Second {
		t.Fatalf("read every 4 s: %+v, want +80 over 8 s", g)
	}
	got = h.Observe("pod:1", t0.Add(35*time.Second), reading(Group{Name: "pool-*-thread-*", Comm: "java", PID: 1, Count: 350}))
	if g := got[0]; g.Growth != 150 || g.Span != 15*time.Second {
		t.Fatalf("read 15 s after the last: %+v, want +150 over 15 s", g)
	}
}

// A thread's name is read when it is first listed and when it is next
// listed (a thread names itself, or is named, right after it starts),
// then every refreshReads times it is listed; a TID reused by a new thread
// shows within as many; threads no longer listed are forgotten.
func TestReaderRereads(t *testing.T) {
	proc := fakeProc(t, map[int][]string{10: {"app", "app", "app"}}, map[int]string{10: "app"})
	rename := func(tid int, name string) {
		if err := os.WriteFile(filepath.Join(proc, "10/task", fmt.Sprint(tid), "comm"), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &Reader{Proc: proc}
	groups := func() string {
		var rd Reading
		if err := r.Process(10, &rd); err != nil {
			t.Fatal(err)
		}
		Rank(rd.Groups)
		var out []string
		for _, g := range rd.Groups {
			out = append(out, fmt.Sprintf("%s ×%d", g.Name, g.Count))
		}
		r.EndRound()
		return strings.Join(out, ", ")
	}
	if got := groups(); got != "app ×3" {
		t.Fatalf("round 0: %s", got)
	}
	// Threads 11 and 12 name themselves just after the first reading
	// listed them: the next round reads them again.
	rename(11, "worker-1")
	rename(12, "worker-2")
	if got := groups(); got != "worker-* ×2, app ×1" {
		t.Fatalf("round 1: %s", got)
	}
	// A later rename shows within refreshReads readings.
	within := func(what, want string) {
		t.Helper()
		for i := 0; i < refreshReads; i++ {
			if groups() == want {
				return
			}
		}
		t.Fatalf("%s not seen within %d readings", what, refreshReads)
	}
	rename(12, "reaper")
	within("a rename", "app ×1, reaper ×1, worker-* ×1")
	// A TID gone for a while and then another thread's.
	os.RemoveAll(filepath.Join(proc, "10/task/12"))
	for i := 0; i < 3; i++ {
		groups()
	}
	if err := os.MkdirAll(filepath.Join(proc, "10/task/12"), 0o755); err != nil {
		t.Fatal(err)
	}
	rename(12, "newcomer")
	within("a reused TID", "app ×1, newcomer ×1, worker-* ×1")
	// Threads that exit are forgotten.
	os.RemoveAll(filepath.Join(proc, "10/task/11"))
	os.RemoveAll(filepath.Join(proc, "10/task/12"))
	for i := 0; i <= 2*forgetRounds; i++ {
		groups()
	}
	if len(r.names) != 1 {
		t.Fatalf("%d names kept for 1 thread", len(r.names))
	}
}
