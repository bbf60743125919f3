package tracer

import (
	"slices"
	"strings"
	"testing"
)

// Every program carries forkwatch's prefix, so that "nothing left attached"
// can be checked by name without a list to keep up to date.
func TestProgramNamesShareThePrefix(t *testing.T) {
	spec, err := loadForkwatch()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Programs {
		if !strings.HasPrefix(name, "fw_") || len(name) > 15 {
			t.Errorf("program %s: want the prefix fw_ and at most 15 characters (the kernel keeps 15)", name)
		}
	}
}

// The plan table: per mode, the jobs and the order in which each job's
// plans are tried, and the programs each plan attaches.
func TestPlanTable(t *testing.T) {
	type planSummary struct {
		mode  Mode
		progs []string
	}
	summarize := func(j job) []planSummary {
		var out []planSummary
		for _, p := range j.plans {
			var progs []string
			for _, h := range p.hooks {
				progs = append(progs, h.prog)
			}
			out = append(out, planSummary{p.mode, progs})
		}
		return out
	}
	tpFailures := planSummary{ModeTracepoint, []string{"fw_tp_clone", "fw_tp_clone3", "fw_tp_fork", "fw_tp_vfork"}}
	if !forkSyscalls { // arm64
		tpFailures.progs = tpFailures.progs[:2]
	}
	fentryFailures := planSummary{ModeFentry, []string{"fw_fexit_copy"}}
	kprobeFailures := planSummary{ModeKprobe, []string{"fw_kfork_ring"}}
	btfTasks := planSummary{ModeTracepoint, []string{"fw_btf_fork", "fw_btf_exit"}}
	rawTasks := planSummary{ModeTracepoint, []string{"fw_raw_fork", "fw_raw_exit"}}
	kprobeTasks := planSummary{ModeKprobe, []string{"fw_kp_task_ring", "fw_tp_exit_ring"}}
	for _, tc := range []struct {
		mode      Mode
		perf, rh7 bool
		failures  []planSummary
		refusals  []planSummary
		tasks     []planSummary
	}{
		{mode: ModeAuto,
			failures: []planSummary{fentryFailures, kprobeFailures, tpFailures},
			refusals: []planSummary{{ModeFentry, []string{"fw_fexit_pids"}}, {ModeKprobe, []string{"fw_kret_pids"}}},
			tasks:    []planSummary{btfTasks, rawTasks, kprobeTasks}},
		{mode: ModeFentry, failures: []planSummary{fentryFailures},
			refusals: []planSummary{{ModeFentry, []string{"fw_fexit_pids"}}}, tasks: []planSummary{btfTasks, rawTasks}},
		{mode: ModeTracepoint, failures: []planSummary{tpFailures}, tasks: []planSummary{btfTasks, rawTasks}},
		{mode: ModeKprobe, failures: []planSummary{kprobeFailures},
			refusals: []planSummary{{ModeKprobe, []string{"fw_kret_pids"}}}, tasks: []planSummary{kprobeTasks}},
		{mode: ModeKprobe, perf: true,
			failures: []planSummary{{ModeKprobe, []string{"fw_kfork_perf"}}},
			refusals: []planSummary{{ModeKprobe, []string{"fw_kret_pids"}}},
			tasks:    []planSummary{{ModeKprobe, []string{"fw_kp_task_perf", "fw_tp_exit_perf"}}}},
		// CentOS/RHEL 7: only kprobe mode, whatever auto would prefer.
		{mode: ModeAuto, rh7: true,
			failures: []planSummary{{ModeKprobe, []string{"fw_kfork_rh7"}}},
			refusals: []planSummary{{ModeKprobe, []string{"fw_kret_pids"}}},
			tasks:    []planSummary{{ModeKprobe, []string{"fw_kp_task_rh7", "fw_tp_exit_rh7"}}}},
	} {
		jobs, err := jobs(tc.mode, tc.perf, tc.rh7)
		if err != nil {
			t.Fatalf("%s: %v", tc.mode, err)
		}
		want := map[string][]planSummary{jobFailures: tc.failures, jobRefusals: tc.refusals, jobTasks: tc.tasks}
		for _, j := range jobs {
			got := summarize(j)
			if !slices.EqualFunc(got, want[j.what], func(a, b planSummary) bool { return a.mode == b.mode && slices.Equal(a.progs, b.progs) }) {
				t.Errorf("mode %s (perf %v, rh7 %v), job %s: plans %v, want %v", tc.mode, tc.perf, tc.rh7, j.what, got, want[j.what])
			}
			if j.required != (j.what != jobRefusals) {
				t.Errorf("job %s: required %v", j.what, j.required)
			}
		}
	}
	// The other modes' programs cannot run on 3.10: asking for them there
	// is an error naming kprobe mode.
	if _, err := jobs(ModeFentry, false, true); err == nil || !strings.Contains(err.Error(), "only kprobe mode") {
		t.Errorf("fentry on a 3.10 kernel: %v", err)
	}
}

// arm64 kernels have no fork or vfork syscall, so no tracepoints to attach
// to: tracepoint mode hooks the exits of clone and clone3 there, and of all
// four on x86-64, whichever machine the test runs on.
func TestTracepointsPerArchitecture(t *testing.T) {
	defer func(v bool) { forkSyscalls = v }(forkSyscalls)
	for _, tc := range []struct {
		forkSyscalls bool
		want         []string
	}{
		{true, []string{"syscalls/sys_exit_clone", "syscalls/sys_exit_clone3", "syscalls/sys_exit_fork", "syscalls/sys_exit_vfork"}},
		{false, []string{"syscalls/sys_exit_clone", "syscalls/sys_exit_clone3"}},
	} {
		forkSyscalls = tc.forkSyscalls
		js, err := jobs(ModeTracepoint, false, false)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, h := range js[0].plans[0].hooks {
			got = append(got, strings.Join(h.at, "/"))
		}
		if js[0].what != jobFailures || !slices.Equal(got, tc.want) {
			t.Errorf("fork syscalls %v: job %s hooks %v, want %v", tc.forkSyscalls, js[0].what, got, tc.want)
		}
	}
}
