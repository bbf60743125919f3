package main

import (
	"github.com/forkwatch/forkwatch/tracer"

	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func parse(args ...string) (Flags, error) {
	var f Flags
	fs := pflag.NewFlagSet("forkwatch", pflag.ContinueOnError)
	fs.SetOutput(devNull{})
	f.SetFlags(fs)
	return f, f.Parse(fs, args)
}

func TestFlagsDefaults(t *testing.T) {
	f, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	if f.Output != "text" || f.Mode != "auto" || f.Duration != 0 || f.PodLogsDir != "/var/log/pods" || f.podLogsDirSet {
		t.Fatalf("defaults: %+v", f)
	}
}

func TestFlagsValues(t *testing.T) {
	f, err := parse("-o", "json", "--duration", "90s", "--mode", "tracepoint", "--pod-logs-dir", "/x", "--cgroup-root=/y")
	if err != nil {
		t.Fatal(err)
	}
	if f.Output != "json" || f.Mode != "tracepoint" || f.Duration != 90*time.Second || f.PodLogsDir != "/x" || !f.podLogsDirSet || f.CgroupRoot != "/y" {
		t.Fatalf("parsed: %+v", f)
	}
}

func TestFlagsModesAndBTF(t *testing.T) {
	for _, mode := range []string{"auto", "fentry", "tracepoint", "kprobe"} {
		f, err := parse("--mode", mode, "--btf", "/btf/vmlinux", "--perf-buffer")
		if err != nil {
			t.Fatal(err)
		}
		if string(f.Mode) != mode || f.BTF != "/btf/vmlinux" || !f.PerfBuffer {
			t.Fatalf("parsed: %+v", f)
		}
	}
}

// The failure hooks' default follows the use: an always-on forkwatch
// (serving metrics) arms them by pressure, an ad hoc run keeps them
// attached; either can be forced.
func TestFailureHooksPerUse(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want tracer.FailureHooks
	}{
		{nil, tracer.HooksAlways},
		{[]string{"--pod", "web-0"}, tracer.HooksAlways},
		{[]string{"--metrics-addr", ":9479"}, tracer.HooksPressure},
		{[]string{"--metrics-addr", ":9479", "--failure-hooks", "always"}, tracer.HooksAlways},
		{[]string{"--failure-hooks", "pressure"}, tracer.HooksPressure},
	} {
		f, err := parse(tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.failureHooks(); got != tc.want {
			t.Errorf("%v: failure hooks %s, want %s", tc.args, got, tc.want)
		}
	}
}

func TestFlagsRejectBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"-o", "xml"}, "must be text or json"},
		{[]string{"--output=yaml"}, "must be text or json"},
		{[]string{"--mode", "magic"}, "must be one of auto, fentry, tracepoint, kprobe"},
		{[]string{"--duration", "soon"}, "invalid argument"},
		{[]string{"--duration", "-5s"}, "must be positive"},
		{[]string{"--ring-buffer-size", "5000"}, "power of two"},
		{[]string{"--failure-hooks", "sometimes"}, "must be auto, always or pressure"},
		{[]string{"--failure-hooks-calm", "100ms"}, "must be at least 1s"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		_, err := parse(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

// --help shows an example of each way to run forkwatch, one line each
// within 80 columns, before the flags.
func TestUsageExamples(t *testing.T) {
	fs := pflag.NewFlagSet("forkwatch", pflag.ContinueOnError)
	var f Flags
	f.SetFlags(fs)
	u := usage(fs)
	flags := strings.Index(u, "\nFlags:\n")
	for _, ex := range []string{"sudo forkwatch ", "forkwatch --pod NAME -n NS ", "forkwatch --metrics-addr :9479 -o json ", "forkwatch doctor "} {
		i := strings.Index(u, "\n  "+ex)
		if i < 0 || i > flags {
			t.Errorf("no example %q before the flags:\n%s", ex, u)
			continue
		}
		line, _, _ := strings.Cut(u[i+1:], "\n")
		if len([]rune(line)) > 80 {
			t.Errorf("example line of %d columns: %q", len([]rune(line)), line)
		}
	}
	if !strings.Contains(u[flags:], "--metrics-addr") {
		t.Errorf("flags not listed after the examples:\n%s", u)
	}
}
