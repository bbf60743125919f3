package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sync"
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
	// The failure hooks by pressure; refusals made while they are detached
	// are counted from the kernel's own counts (see node.RefusalLedger).
	fh := newHooks(t, w, &mu, flags.Calm, root, attr)
	if err := fh.start(time.Now()); err != nil {
		return err
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
	go func() { readErr <- readEvents(t, attr, tail, w, m, &mu, fh) }()

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
				snap = sampler.Sample(now)
				if err := fh.second(now, snap, n/secondTicks); err != nil {
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
func readEvents(t *tracer.Tracer, attr *node.Attributor, tail *podTail, w output.Writer, m *output.Metrics, mu *sync.Mutex, fh *hooks) error {
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
			if err := fh.pressure(&rec.Failure); err != nil {
				return err
			}
			continue
		}
		if rec.IsFailure {
			fh.failure(&rec.Failure)
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
