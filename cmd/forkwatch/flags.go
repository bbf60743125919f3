package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/forkwatch/forkwatch/tracer"
)

// Flags are forkwatch's command line, kubectl-like.
type Flags struct {
	Output      outputFormat
	Duration    time.Duration
	Mode        modeValue
	CgroupRoot  string
	PodLogsDir  string
	Interval    time.Duration
	Pod         string
	Namespace   string
	Wait        bool
	MetricsAddr string
	BTF         string
	Version     bool
	// FailureHooks: auto, always or pressure; Calm: how long no limit has
	// been within reach before hooks armed by pressure are detached.
	FailureHooks hooksValue
	Calm         time.Duration

	// Hidden: for readiness probes and tests.
	ReadyFile      string
	RingBufferSize int
	PerfBuffer     bool

	podLogsDirSet bool
}

const defaultPodLogsDir = "/var/log/pods"

// SetFlags registers the flags on fs.
func (f *Flags) SetFlags(fs *pflag.FlagSet) {
	f.Output = "text"
	f.Mode = modeValue(tracer.ModeAuto)
	f.FailureHooks = "auto"
	fs.VarP(&f.Output, "output", "o", "output format: text or json (JSON Lines, one object per event)")
	fs.DurationVar(&f.Duration, "duration", 0, "stop after this long, e.g. 30s or 5m (default: until interrupted)")
	fs.DurationVar(&f.Interval, "interval", 10*time.Second, "when stdout is not a terminal: how often to print the per-pod rates (text) or a rates object (json)")
	fs.StringVar(&f.Pod, "pod", "", "live tail of one pod: its thread and process creations, exits and failures")
	fs.StringVarP(&f.Namespace, "namespace", "n", "", "with --pod: the pod's namespace (default: any)")
	fs.BoolVar(&f.Wait, "wait", false, "with --pod: wait for a pod that does not exist yet instead of exiting")
	fs.StringVar(&f.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics, /healthz and /readyz on this address, e.g. :9479")
	fs.Var(&f.Mode, "mode", "how to attach to the kernel: "+strings.Join(modeNames(), ", ")+" (auto: the best this kernel supports)")
	fs.Var(&f.FailureHooks, "failure-hooks", "when the hooks that see failed forks are attached, where they tax every syscall (tracepoint mode): always, pressure (while a limit is within reach), or auto: pressure with --metrics-addr (always-on), always otherwise (ad hoc)")
	fs.DurationVar(&f.Calm, "failure-hooks-calm", time.Minute, "with pressure: detach the failure hooks after no limit has been within reach, and no fork has failed, for this long")
	fs.StringVar(&f.BTF, "btf", "", "BTF file of the running kernel, for kernels without /sys/kernel/btf/vmlinux (e.g. CentOS 7: from BTFHub)")
	fs.StringVar(&f.CgroupRoot, "cgroup-root", "", "mount of the cgroup hierarchy holding the pids controller (default: /sys/fs/cgroup/pids if mounted, else /sys/fs/cgroup)")
	fs.StringVar(&f.PodLogsDir, "pod-logs-dir", defaultPodLogsDir, "kubelet's pod log directory, <namespace>_<name>_<uid>/ per pod, used to name pods")
	fs.BoolVar(&f.Version, "version", false, "print forkwatch's version and exit")
	fs.StringVar(&f.ReadyFile, "ready-file", "", "create this file once every probe is attached")
	fs.IntVar(&f.RingBufferSize, "ring-buffer-size", tracer.DefaultRingBufferSize, "size of the ring buffer records come through, in bytes (a power of two); raise it if forkwatch reports lost events")
	fs.BoolVar(&f.PerfBuffer, "perf-buffer", false, "hand records over through a perf event array, as on kernels without a BPF ring buffer")
	_ = fs.MarkHidden("ready-file")
	_ = fs.MarkHidden("perf-buffer")
}

// Parse parses args and checks values that pflag's types do not.
func (f *Flags) Parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: forkwatch takes flags only, or the doctor command", fs.Arg(0))
	}
	if f.Duration < 0 {
		return fmt.Errorf("invalid --duration %s: must be positive, e.g. 30s", f.Duration)
	}
	if f.Interval < time.Second {
		return fmt.Errorf("invalid --interval %s: must be at least 1s", f.Interval)
	}
	if f.Pod == "" && (fs.Changed("namespace") || f.Wait) {
		return errors.New("--namespace and --wait go with --pod NAME")
	}
	if n := f.RingBufferSize; n < 4096 || n&(n-1) != 0 {
		return fmt.Errorf("invalid --ring-buffer-size %d: must be a power of two of at least 4096", n)
	}
	if f.Calm < time.Second {
		return fmt.Errorf("invalid --failure-hooks-calm %s: must be at least 1s, e.g. 1m", f.Calm)
	}
	f.podLogsDirSet = fs.Changed("pod-logs-dir")
	return nil
}

// failureHooks resolves auto: an always-on forkwatch (serving metrics)
// must not tax the node's syscalls while nothing is wrong; an ad hoc run
// during an incident sees every failure from its first second.
func (f *Flags) failureHooks() tracer.FailureHooks {
	switch {
	case f.FailureHooks != "auto":
		return tracer.FailureHooks(f.FailureHooks)
	case f.MetricsAddr != "":
		return tracer.HooksPressure
	}
	return tracer.HooksAlways
}

type hooksValue string

func (h *hooksValue) String() string { return string(*h) }
func (h *hooksValue) Type() string   { return "when" }
func (h *hooksValue) Set(s string) error {
	switch s {
	case "auto", string(tracer.HooksAlways), string(tracer.HooksPressure):
		*h = hooksValue(s)
		return nil
	}
	return errors.New("must be auto, always or pressure")
}

type outputFormat string

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Type() string   { return "format" }
func (o *outputFormat) Set(s string) error {
	switch s {
	case "text", "json":
		*o = outputFormat(s)
		return nil
	}
	return errors.New("must be text or json")
}

type modeValue tracer.Mode

func (m *modeValue) String() string { return string(*m) }
func (m *modeValue) Type() string   { return "mode" }
func (m *modeValue) Set(s string) error {
	if !slices.Contains(tracer.Modes, tracer.Mode(s)) {
		return fmt.Errorf("must be one of %s", strings.Join(modeNames(), ", "))
	}
	*m = modeValue(s)
	return nil
}

func modeNames() []string {
	names := make([]string, len(tracer.Modes))
	for i, m := range tracer.Modes {
		names[i] = string(m)
	}
	return names
}
