package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/forkwatch/forkwatch/output"
	"github.com/forkwatch/forkwatch/output/doctor"
	"github.com/forkwatch/forkwatch/output/node"
)

// errRisksFound is what runDoctor returns when the report holds a risk,
// after printing it: exit code 1, nothing more on stderr. Warnings alone
// return nil (exit code 0); bad input returns a usageError (exit code 2).
var errRisksFound = errors.New("doctor: risks found")

// runDoctor is `forkwatch doctor`: it reads the node's PID and thread limits
// (kernel.pid_max and threads-max, every pids.max from the root of the pids
// hierarchy down to each pod, systemd TasksMax= of kubelet, containerd,
// docker, crio and calico-node, nproc from limits.conf) and reports the
// ones that can refuse forks before they do. It only reads files: it works
// on a node already out of PIDs.
//
// -o text (default) prints a table of the limits and their use, then each
// risk and warning with its evidence and fix, fitted to the terminal (80
// columns when stdout is not one).
//
// -o json prints one JSON object on one line:
//
//	{
//	  "node": {"pid_max": 32768, "threads_max": 192730, "tasks": 812},
//	  "cgroup_root": "/sys/fs/cgroup/pids",   // mount of the pids hierarchy
//	  "cgroup_v2": false,
//	  "kubepods": "/kubepods",                 // "" when none was found
//	  "cgroups": [                             // root, ancestors, kubepods, QoS, pods, then units
//	    {"path": "/kubepods/burstable/pod<uid>",
//	     "role": "root|ancestor|kubepods|qos|pod|unit",
//	     "qos": "guaranteed|burstable|besteffort",             // qos and pod roles
//	     "pod": {"namespace": "ns", "name": "web-0", "uid": "…"}, // pod role; names from --pod-logs-dir
//	     "unit": "kubelet.service",                            // unit role
//	     "current": 12,                                        // pids.current; -1 unknown
//	     "max": 4096,                                          // pids.max; -1 unlimited ("max")
//	     "threads": [{"name": "pool-*-thread-*", "comm": "java", // the 3 pods with the most tasks:
//	                  "pid": 4121, "count": 1580}]}            // their 5 largest groups of live threads
//	  ],
//	  "systemd": [{"unit": "kubelet.service", "tasks_max": "15%",
//	               "effective": 4915,          // tasks; -1 infinity, 0 unknown
//	               "source": "/etc/systemd/system/kubelet.service.d/10.conf:2"}],
//	  "nproc": [{"domain": "*", "type": "soft", "value": 4096, // -1 unlimited
//	             "source": "/etc/security/limits.d/20-nproc.conf:5"}],
//	  "findings": [                            // risks, then warnings, then info
//	    {"severity": "risk|warning|info", "id": "stale-kubepods-limit",
//	     "summary": "one line", "evidence": ["numbers and files"], "fix": "what to do"}
//	  ]
//	}
//
// Finding ids: stale-kubepods-limit, pid-max-below-pod-limits,
// usage-above-80 (risks); pod-without-pids-limit, low-nproc-limit, low-tasks-max,
// read-error (warnings); no-kubepods and limit-* (info).
func runDoctor(args []string, stdout io.Writer) error {
	fs := pflag.NewFlagSet("forkwatch doctor", pflag.ContinueOnError)
	fs.SortFlags = false
	output := fs.StringP("output", "o", "text", "output format: text or json (one object)")
	cgroupRoot := fs.String("cgroup-root", "", "mount of the cgroup hierarchy holding the pids controller (default: /sys/fs/cgroup/pids if mounted, else /sys/fs/cgroup)")
	podLogsDir := fs.String("pod-logs-dir", "/var/log/pods", "kubelet's pod log directory, <namespace>_<name>_<uid>/ per pod, used to name pods")
	procRoot := fs.String("proc-root", "/proc", "where proc is mounted")
	kubepods := fs.String("kubepods", "", "the kubepods cgroup, relative to --cgroup-root (default: /kubepods or /kubepods.slice)")
	systemdDirs := fs.StringArray("systemd-dir", nil, "a systemd unit directory to read instead of the system's (repeat, highest priority first)")
	_ = fs.MarkHidden("proc-root")
	_ = fs.MarkHidden("kubepods")
	_ = fs.MarkHidden("systemd-dir")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: forkwatch doctor [flags]\n\nChecks this node's PID and thread limits (kernel.pid_max, threads-max, pids\ncgroups down to each pod, systemd TasksMax=, nproc) before they refuse forks.\nExit code 0: no risk (warnings allowed); 1: a risk was found; 2: bad input.\n\nFlags:\n%s", fs.FlagUsages())
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err // pflag has already called fs.Usage
		}
		return usagef("%v (see forkwatch doctor --help)", err)
	}
	if fs.NArg() > 0 {
		return usagef("doctor: unexpected argument %q (flags only; see forkwatch doctor --help)", fs.Arg(0))
	}
	if *output != "text" && *output != "json" {
		return usagef("invalid argument %q for \"-o, --output\" flag: must be text or json", *output)
	}

	cfg := doctor.DefaultConfig()
	root, err := node.DetectCgroupRoot(*cgroupRoot)
	if err != nil {
		return usagef("invalid --cgroup-root: %v", err)
	}
	cfg.CgroupRoot, cfg.CgroupV2 = root.Path, root.V2
	cfg.ProcRoot = *procRoot
	cfg.Kubepods = *kubepods
	cfg.PodLogsDir = *podLogsDir
	if len(*systemdDirs) > 0 {
		cfg.SystemdDirs = *systemdDirs
	}
	if fs.Changed("pod-logs-dir") {
		// The default may be missing (not a kubelet node: pods are then
		// named by UID); a directory asked for must exist.
		if fi, err := os.Stat(*podLogsDir); err != nil || !fi.IsDir() {
			return usagef("invalid --pod-logs-dir %s: not a directory", *podLogsDir)
		}
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}

	report := doctor.Check(cfg)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		err = enc.Encode(&report)
	} else {
		err = report.WriteText(stdout, textWidth(stdout))
	}
	if err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if report.HasRisk() {
		return errRisksFound
	}
	return nil
}

// textWidth is the width doctor's text is laid out for: the terminal's,
// read once (doctor prints once), or 80 columns in a file or a pipe.
func textWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if cols, _, ok := output.TerminalSize(f); ok {
			return cols
		}
	}
	return doctor.DefaultWidth
}
