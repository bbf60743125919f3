package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// A measurement means something only on a quiet machine: another tracer
// attached to the fork path taxes the untraced runs too, and another
// process burning CPU takes it from the storms and from forkwatch. Before
// each measurement the bench waits for the machine to be quiet, and reports
// the measurements it had to take on a busy one.

// Program types that hook the fork path: kprobe (2), tracepoint (5),
// perf_event (7), raw_tracepoint (17), raw_tracepoint_writable (24),
// tracing (26: fentry, fexit, tp_btf).
var tracingProgTypes = map[string]bool{"2": true, "5": true, "7": true, "17": true, "24": true, "26": true}

// busyCPU is the most CPU (in cores) the machine may use, outside the
// bench's own processes, for a measurement to count as taken on a quiet
// machine.
const busyCPU = 0.15

// ours lists the bench and the children it runs.
func ours() map[int]bool {
	mine := map[int]bool{os.Getpid(): true}
	cleanupMu.Lock()
	for p := range children {
		mine[p.pid()] = true
	}
	cleanupMu.Unlock()
	return mine
}

// foreignTracers lists the processes the bench did not start that hold a
// tracing BPF program (another forkwatch, bpftrace, a test suite's).
func foreignTracers() []string {
	mine := ours()
	ents, _ := os.ReadDir("/proc")
	var found []string
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || mine[pid] {
			continue
		}
		if holdsTracingProgram(pid) {
			comm, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "comm"))
			found = append(found, fmt.Sprintf("%s[%d]", strings.TrimSpace(string(comm)), pid))
		}
	}
	return found
}

func holdsTracingProgram(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err != nil || l != "anon_inode:bpf-prog" {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "prog_type:"); ok && tracingProgTypes[strings.TrimSpace(v)] {
				return true
			}
		}
	}
	return false
}

// machineCPU is the CPU time the whole machine has been busy (all cores,
// user, system, interrupts, steal), in ns, from /proc/stat.
func machineCPU() (int64, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, fmt.Errorf("empty /proc/stat")
	}
	var busy int64
	fields := strings.Fields(sc.Text()) // cpu user nice system idle iowait irq softirq steal guest…
	for i, v := range fields[1:] {
		if i >= 8 { // guest time is in user already
			break
		}
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return busy * int64(time.Second) / 100, nil // USER_HZ
}

// machineBusy returns how many cores the machine kept busy over d.
func machineBusy(ctx context.Context, d time.Duration) (float64, error) {
	b0, err := machineCPU()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return 0, err
	}
	b1, err := machineCPU()
	if err != nil {
		return 0, err
	}
	return float64(b1-b0) / float64(time.Since(t0)), nil
}

// progWatch notes the BPF programs loaded while it runs that are not the
// bench's: another tracer attaching during a measurement. It lists the
// kernel's programs every 250 ms (a few syscalls).
type progWatch struct {
	mu      sync.Mutex
	before  map[ebpf.ProgramID]bool
	seen    map[ebpf.ProgramID]string
	ours    map[ebpf.ProgramID]bool
	paused  bool
	stop    chan struct{}
	stopped chan struct{}
}

func listPrograms() map[ebpf.ProgramID]bool {
	ids := map[ebpf.ProgramID]bool{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return ids
		}
		ids[next], id = true, next
	}
}

func watchPrograms() *progWatch {
	w := &progWatch{before: listPrograms(), seen: map[ebpf.ProgramID]string{}, ours: map[ebpf.ProgramID]bool{},
		stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(w.stopped)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			w.mu.Lock()
			paused := w.paused
			w.mu.Unlock()
			if paused {
				continue
			}
			for id := range listPrograms() {
				w.mu.Lock()
				if !w.before[id] && w.seen[id] == "" {
					w.seen[id] = programName(id)
				}
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func programName(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "?"
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil || info.Name == "" {
		return "?"
	}
	return info.Name
}

// pause and resume bracket a tracer of the bench's loading or unloading
// its programs (and probing the kernel with throw-away ones).
func (w *progWatch) pause() { w.mu.Lock(); w.paused = true; w.mu.Unlock() }

func (w *progWatch) resume() { w.mu.Lock(); w.paused = false; w.mu.Unlock() }

// addOurs declares the programs a process of the bench holds.
func (w *progWatch) addOurs(pid int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range programIDsOf(pid) {
		w.ours[id] = true
	}
}

// end stops the watch and describes the foreign programs it saw, if any.
func (w *progWatch) end() string {
	close(w.stop)
	<-w.stopped
	var foreign []string
	for id, name := range w.seen {
		if !w.ours[id] {
			foreign = append(foreign, fmt.Sprintf("%s (id %d)", name, id))
		}
	}
	return strings.Join(foreign, ", ")
}

// programIDsOf lists the BPF programs a process holds, from the prog_id
// lines of /proc/<pid>/fdinfo.
func programIDsOf(pid int) []ebpf.ProgramID {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, _ := os.ReadDir(dir)
	var ids []ebpf.ProgramID
	for _, d := range ents {
		b, err := os.ReadFile(filepath.Join(dir, d.Name()))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "prog_id:"); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					ids = append(ids, ebpf.ProgramID(id))
				}
			}
		}
	}
	return ids
}

// bpfStatsOn says whether the kernel keeps BPF run-time statistics (the
// sysctl, or a BPF_ENABLE_STATS file descriptor someone holds).
func bpfStatsOn() bool {
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

var quietWait = flag.Duration("quiet-wait", 3*time.Minute, "how long to wait for a quiet machine before each measurement (then measure anyway, and say so)")

// waitQuiet waits, up to -quiet-wait, until no foreign tracer runs and the
// machine is idle but for the bench's own (idle) processes; it says whether
// it was quiet in the end. It asks the bench's children to be idle: call it
// between measurements.
func waitQuiet(ctx context.Context) bool {
	start := time.Now()
	var said time.Time
	for {
		var why []string
		if f := foreignTracers(); len(f) > 0 {
			why = append(why, "tracers the bench did not start: "+strings.Join(f, " "))
		}
		busy, err := machineBusy(ctx, time.Second)
		if ctx.Err() != nil {
			return false
		}
		if err == nil && busy > busyCPU {
			why = append(why, fmt.Sprintf("%.0f%% of a core busy outside the bench", busy*100))
		}
		if len(why) == 0 && bpfStatsOn() {
			// Often left on by someone's measurement; waiting would not
			// end it. It adds two clock reads to every BPF program run.
			progress("kernel.bpf_stats_enabled is 1: forkwatch's programs cost more than they would")
			return false
		}
		if len(why) == 0 {
			if !said.IsZero() {
				progress("quiet after %s", time.Since(start).Round(time.Second))
			}
			return true
		}
		if time.Since(said) >= 30*time.Second {
			progress("waiting for a quiet machine: %s", strings.Join(why, "; "))
			said = time.Now()
		}
		if time.Since(start) >= *quietWait {
			progress("measuring anyway, on a busy machine")
			return false
		}
	}
}
