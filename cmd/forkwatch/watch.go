package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/forkwatch/forkwatch/output"
	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/output/node/limits"
	"github.com/forkwatch/forkwatch/output/node/rates"
	"github.com/forkwatch/forkwatch/tracer"
)

// tick paces folding, flushing and the lost-event check; every secondTicks
// ticks the node limits are re-read and the per-pod rates sampled.
const (
	tick        = 100 * time.Millisecond
	secondTicks = 10
)

// victimWindow: a process that exits this soon after its last failed fork
// is reported as a victim of the limit (calico-node exiting with code 2
// 180 ms after 20 failed clones is the crash the on-call is looking at).
const victimWindow = 5 * time.Second

// watch attaches, streams events to the writer until ctx is done or the
// duration ends, then detaches.
func watch(ctx context.Context, flags *Flags) error {
	if err := tracer.CheckPrivileges(); err != nil {
		return usageError{err}
	}
	root, err := node.DetectCgroupRoot(flags.CgroupRoot)
	if err == nil && root.Copy {
		err = fmt.Errorf("%s is not a cgroup filesystem", root.Path)
	}
	if err != nil {
		return usagef("--cgroup-root: %v; point it at the mount of the cgroup hierarchy with the pids controller, e.g. /sys/fs/cgroup", err)
	}
	var metrics *metricsServer
	if flags.MetricsAddr != "" {
		if metrics, err = listenMetrics(flags.MetricsAddr); err != nil {
			return usagef("--metrics-addr: %v; choose a free address, e.g. --metrics-addr :9479", err)
		}
		defer metrics.Close()
	}
	if err := tracer.EnsureTracefs(); err != nil {
		return usageError{err}
	}
	var warning string
	pods, err := kube.NewPodDirectory(flags.PodLogsDir)
	if err != nil {
		if flags.podLogsDirSet || flags.Pod != "" {
			return usagef("--pod-logs-dir: %v; give kubelet's pod log directory (default %s)", err, defaultPodLogsDir)
		}
		// Not fatal on a node without kubelet; said once attached, so
		// that an error is still the only line when one follows.
		warning = fmt.Sprintf("forkwatch: %s not found, pods are named by UID only (set --pod-logs-dir)\n", flags.PodLogsDir)
		pods = nil
	}
	var tail *podTail
	if flags.Pod != "" {
		tail = &podTail{pods: pods, ns: flags.Namespace, name: flags.Pod}
		if len(pods.Find(tail.ns, tail.name)) == 0 {
			if !flags.Wait {
				return usagef("pod %s not found in %s; check the name (and -n), or add --wait to wait for it", tail.describe(), flags.PodLogsDir)
			}
			fmt.Fprintf(os.Stderr, "forkwatch: pod %s does not exist yet, waiting for it\n", tail.describe())
		}
	}

	// The node may be out of PIDs: create every OS thread forkwatch will
	// need now, while it still can.
	prestartThreads()

	limitsNow, err := limits.ReadNode("/proc")
	if err != nil {
		return err
	}
	t, err := tracer.New(tracer.Options{
		Mode: tracer.Mode(flags.Mode), RingBufferSize: flags.RingBufferSize, Tail: tail != nil,
		BTF: flags.BTF, PerfBuffer: flags.PerfBuffer, PidsRoot: root.Path, PidsV2: root.V2,
		PidMax: limitsNow.PidMax, ThreadsMax: limitsNow.ThreadsMax,
		FailureHooks: flags.failureHooks(),
	})
	if err != nil {
		return usageError{err}
	}
	defer t.Close()
	fmt.Fprint(os.Stderr, warning)
	// Loading parsed the kernel's BTF (tens of MiB, garbage now): hand it
	// back to the system rather than carry it for the life of a DaemonSet.
	debug.FreeOSMemory()
	// What is left is small and long-lived (per-pod state, caches): a
	// collection at 50% growth rather than 100% keeps the always-on
	// footprint down for a few ms of CPU a minute. GOGC still overrides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}

	attr := &node.Attributor{Pods: pods}
	// One id→path map for the sampler and the pod tail.
	paths := node.NewCgroupPaths(root.Path)
	var w output.Writer
	if flags.Output == "json" {
		w = output.NewJSON(os.Stdout)
	} else {
		text := output.NewText(os.Stdout)
		text.HostPIDNamespace = hostPIDNamespace()
		text.Live = tail == nil && isTerminal(os.Stdout)
		w = text
	}
	var m *output.Metrics
	if metrics != nil {
		m = output.NewMetrics(t.Attached(), version)
		metrics.registry.MustRegister(m)
		w = output.Tee{w, m}
		metrics.ready.Store(true)
	}
	if err := w.Attached(t.Mode(), t.Attached(), t.FailureHooks()); err != nil {
		return err
	}
	sampler := node.NewSampler(t, root, paths, attr, rates.DefaultConfig)
	if tail != nil {
		tail.tracer, tail.paths, tail.sampler = t, paths, sampler
		if err := tail.refresh(); err != nil {
			return err
		}
	}
	var mu sync.Mutex // serialises the writer between the reader and the ticker
	var armed armedTimes
	armed.disarmed.Store(time.Now().UnixNano())
	// Refusals made while the failure hooks are detached are counted from
	// the kernel's own counts (see node.RefusalLedger).
	var ledger *node.RefusalLedger
	if t.FailureHooks().Policy == tracer.HooksPressure {
		file, inLimit := t.RefusalCounts()
		ledger = node.NewRefusalLedger(root.Path, file, inLimit, attr)
		_, near, err := ledger.Walk(time.Now())
		if err != nil {
			return fmt.Errorf("reading the pids controller's refusal counts: %w", err)
		}
		if err := armNear(t, w, &mu, &armed, near, time.Now()); err != nil {
			return err
		}
	}
	if flags.ReadyFile != "" {
		if err := os.WriteFile(flags.ReadyFile, nil, 0o644); err != nil {
			return fmt.Errorf("--ready-file: %w", err)
		}
		defer os.Remove(flags.ReadyFile)
	}

	if flags.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, flags.Duration)
		defer cancel()
	}

	readErr := make(chan error, 1)
	go func() { readErr <- readEvents(t, attr, tail, w, m, &mu, &armed, ledger) }()

	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	var lostSeen uint64
	var sampleWarned time.Time
	intervalTicks := int(flags.Interval / tick)
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			t.StopReading()
			err := <-readErr
			mu.Lock()
			defer mu.Unlock()
			total, lerr := t.EventsLost()
			if lerr == nil {
				lerr = reportLost(w, total, &lostSeen)
			}
			if lerr != nil && err == nil {
				err = lerr
			}
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			return err
		case err := <-readErr:
			return err
		case now := <-ticker.C:
			var snap *node.Snapshot
			if n%secondTicks == 0 {
				if err := disarmWhenCalm(t, w, &mu, &armed, now, flags.Calm); err != nil {
					return err
				}
				if n%(ledgerSeconds*secondTicks) == 0 {
					if err := reportUnseen(t, w, &mu, &armed, ledger, now); err != nil {
						return err
					}
				}
				snap = sampler.Sample(now)
				if err := armFromSnapshot(t, w, &mu, &armed, snap, now); err != nil {
					return err
				}
				if snap.Err != nil && now.Sub(sampleWarned) >= warnEvery {
					sampleWarned = now
					fmt.Fprintf(os.Stderr, "forkwatch: warning: sampling (%d errors so far, counted in forkwatch_scrape_errors_total): %v\n", snap.Errors, snap.Err)
				}
				if tail != nil {
					if err := tail.refresh(); err != nil {
						return err
					}
				}
			}
			mu.Lock()
			var err error
			switch {
			case snap == nil:
			case tail == nil:
				if err = reportLost(w, snap.EventsLost, &lostSeen); err == nil {
					err = w.Rates(snap, n%intervalTicks == 0)
				}
			default: // the tail shows its pod's threads, no table; the metrics still follow the node
				err = reportLost(w, snap.EventsLost, &lostSeen)
				if err == nil && m != nil {
					err = m.Rates(snap, false)
				}
				if err == nil && n%intervalTicks == 0 {
					err = w.Threads(snap)
				}
			}
			if err == nil {
				err = w.Flush(now)
			}
			mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
}

// warnEvery bounds how often a recurring problem (a record that does not
// decode, a file the sampler cannot read) is written to stderr; each is
// counted in a metric all the same.
const warnEvery = time.Minute

// readEvents decodes ring-buffer records until the tracer stops reading. A
// record that does not decode is counted, warned about and skipped: one bad
// record must not end a DaemonSet's watch.
func readEvents(t *tracer.Tracer, attr *node.Attributor, tail *podTail, w output.Writer, m *output.Metrics, mu *sync.Mutex, armed *armedTimes, ledger *node.RefusalLedger) error {
	clock := tracer.NewClock()
	var (
		raw    ringbuf.Record
		rec    tracer.Record
		f      node.Failure // the writers copy what they keep
		ev     node.TaskEvent
		warned time.Time
		bad    uint64
	)
	for {
		if err := t.ReadRecord(&raw); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading events: %w", err)
		}
		if err := tracer.Decode(raw.RawSample, clock, &rec); err != nil {
			bad++
			if m != nil {
				m.BadRecord()
			}
			if now := time.Now(); now.Sub(warned) >= warnEvery {
				warned = now
				fmt.Fprintf(os.Stderr, "forkwatch: warning: skipped a record it could not decode (%d so far, counted in forkwatch_records_undecodable_total): %v\n", bad, err)
			}
			continue
		}
		if rec.IsPressure {
			if err := arm(t, w, mu, armed, &rec.Failure); err != nil {
				return err
			}
			continue
		}
		if rec.IsFailure {
			armed.lastFailure.Store(rec.Failure.Time.UnixNano())
			ledger.Seen(&rec.Failure)
		}
		victim := !rec.IsFailure && rec.Task.Failures > 0 && rec.Task.Time.Sub(rec.Task.LastFailure) <= victimWindow
		if !rec.IsFailure && !victim && tail == nil {
			continue // exited long after its failures: not their victim
		}
		who := &ev.Who
		if rec.IsFailure {
			attr.Failure(&f, &rec.Failure)
			who = &f.Who
		} else {
			attr.Task(&ev, &rec.Task)
		}
		if tail != nil && !tail.matches(who) {
			continue
		}
		mu.Lock()
		var err error
		if rec.IsFailure {
			err = w.Failure(&f)
		} else {
			err = w.Task(&ev)
		}
		mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// armedTimes is when the failure hooks were last armed by pressure and
// when the last failure was read (Unix ns), for disarming after a calm.
type armedTimes struct {
	at, lastFailure, disarmed atomic.Int64
}

// ledgerSeconds is how often, in seconds, the refusal counts are walked
// while the failure hooks are detached.
const ledgerSeconds = 10

// reportUnseen reports the refusals no failure record reported, while the
// failure hooks have been detached long enough for the ring buffer to be
// drained.
func reportUnseen(t *tracer.Tracer, w output.Writer, mu *sync.Mutex, armed *armedTimes, ledger *node.RefusalLedger, now time.Time) error {
	if ledger == nil || t.FailureHooks().Armed || now.Sub(time.Unix(0, armed.disarmed.Load())) < 2*time.Second {
		return nil
	}
	unseen, near, err := ledger.Walk(now)
	if err != nil {
		return fmt.Errorf("reading the pids controller's refusal counts: %w", err)
	}
	mu.Lock()
	for i := range unseen {
		if err := w.Unseen(&unseen[i]); err != nil {
			mu.Unlock()
			return err
		}
	}
	mu.Unlock()
	return armNear(t, w, mu, armed, near, now)
}

// armNear arms the failure hooks for a pids cgroup the walk of the
// hierarchy found within reach.
func armNear(t *tracer.Tracer, w output.Writer, mu *sync.Mutex, armed *armedTimes, near *limits.Pids, now time.Time) error {
	if near == nil {
		return nil
	}
	changed, err := t.Arm(fmt.Sprintf("pids cgroup %s at %d of %d, as read at %s", near.Path, near.Current, near.Max, now.Format("15:04:05")))
	if err != nil {
		return fmt.Errorf("attaching the failure hooks: %w", err)
	}
	armed.at.Store(now.UnixNano())
	if !changed {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	return w.FailureHooks(now, t.FailureHooks())
}

// arm attaches the failure hooks: the pressure record p says which limit
// came within reach.
func arm(t *tracer.Tracer, w output.Writer, mu *sync.Mutex, armed *armedTimes, p *tracer.Failure) error {
	changed, err := t.Arm(tracer.PressureReason(p))
	if err != nil {
		return fmt.Errorf("attaching the failure hooks: %w", err)
	}
	if !changed {
		return nil
	}
	now := time.Now()
	armed.at.Store(now.UnixNano())
	mu.Lock()
	defer mu.Unlock()
	return w.FailureHooks(now, t.FailureHooks())
}

// armFromSnapshot arms the failure hooks when the second's reading finds
// a limit within reach, and keeps them armed while it is: for limits that
// come within reach without a task created near them (a pids.max lowered
// under a cgroup's tasks, a sysctl).
func armFromSnapshot(t *tracer.Tracer, w output.Writer, mu *sync.Mutex, armed *armedTimes, snap *node.Snapshot, now time.Time) error {
	if t.FailureHooks().Policy != tracer.HooksPressure {
		return nil
	}
	f, ok := snap.WithinReach()
	if !ok {
		return nil
	}
	changed, err := t.Arm(fmt.Sprintf("%s at %d of %d, as read at %s", f.Limit, f.Current, f.Max, now.Format("15:04:05")))
	if err != nil {
		return fmt.Errorf("attaching the failure hooks: %w", err)
	}
	armed.at.Store(now.UnixNano())
	if !changed {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	return w.FailureHooks(now, t.FailureHooks())
}

// disarmWhenCalm detaches failure hooks armed by pressure once no limit has
// been within reach, and no fork has failed, for calm.
func disarmWhenCalm(t *tracer.Tracer, w output.Writer, mu *sync.Mutex, armed *armedTimes, now time.Time, calm time.Duration) error {
	h := t.FailureHooks()
	if h.Policy != tracer.HooksPressure || !h.Armed {
		return nil
	}
	last := max(armed.at.Load(), armed.lastFailure.Load(), t.LastPressure().UnixNano())
	if now.Sub(time.Unix(0, last)) < calm {
		return nil
	}
	changed, err := t.Disarm(fmt.Sprintf("no limit within reach and no failed fork for %s: attached again when a limit is", calm))
	if err != nil {
		return fmt.Errorf("detaching the failure hooks: %w", err)
	}
	if !changed {
		return nil
	}
	armed.disarmed.Store(now.UnixNano())
	mu.Lock()
	defer mu.Unlock()
	return w.FailureHooks(now, t.FailureHooks())
}

// reportLost tells the writer when the kernel's count of lost events rose.
func reportLost(w output.Writer, total uint64, seen *uint64) error {
	if total == *seen {
		return nil
	}
	delta := total - *seen
	*seen = total
	return w.EventsLost(time.Now(), delta, total)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// podTail keeps the kernel's tailed cgroups set to the cgroups of the pods
// named by --pod (and -n): pods that start later, or are recreated under the
// same name, are picked up within a second.
type podTail struct {
	pods     *kube.PodDirectory
	ns, name string
	tracer   *tracer.Tracer
	paths    *node.CgroupPaths
	sampler  *node.Sampler // reads the pod's threads

	mu     sync.Mutex
	uids   map[string]bool
	tailed map[uint64]bool
}

func (p *podTail) describe() string {
	if p.ns == "" {
		return p.name
	}
	return p.ns + "/" + p.name
}

func (p *podTail) refresh() error {
	uids := map[string]bool{}
	want := map[uint64]bool{}
	for _, pod := range p.pods.Find(p.ns, p.name) {
		uids[pod.UID] = true
		for id := range p.paths.PodCgroups(pod.UID) {
			want[id] = true
		}
	}
	for id := range want {
		if !p.tailed[id] {
			if err := p.tracer.Tail(id); err != nil {
				return err
			}
		}
	}
	for id := range p.tailed {
		if !want[id] {
			if err := p.tracer.Untail(id); err != nil {
				return err
			}
		}
	}
	p.mu.Lock()
	p.uids, p.tailed = uids, want
	p.mu.Unlock()
	tailed := make([]string, 0, len(uids))
	for uid := range uids {
		tailed = append(tailed, uid)
	}
	slices.Sort(tailed)
	p.sampler.Tail(tailed)
	return nil
}

// matches reports whether an event of who belongs to the tailed pod.
func (p *podTail) matches(who *node.Who) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return who.Pod != nil && p.uids[who.Pod.UID]
}
