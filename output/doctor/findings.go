package doctor

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Finding IDs. They are stable: scripts and alerts match on them.
const (
	IDStaleKubepods      = "stale-kubepods-limit"
	IDPidMaxBelowPods    = "pid-max-below-pod-limits"
	IDUsageAbove80       = "usage-above-80"
	IDPodWithoutLimit    = "pod-without-pids-limit"
	IDLowNproc           = "low-nproc-limit"
	IDLowTasksMax        = "low-tasks-max"
	IDReadError          = "read-error"
	IDNoKubepods         = "no-kubepods"
	IDLimitPidMax        = "limit-pid-max"
	IDLimitThreadsMax    = "limit-threads-max"
	IDLimitPidsCgroup    = "limit-pids-cgroup"
	IDLimitSystemdTasks  = "limit-systemd-tasksmax"
	IDLimitNproc         = "limit-nproc"
	usageThresholdPct    = 80
	lowNprocThreshold    = 65536
	lowTasksMaxThreshold = 10000
	maxListed            = 20 // pods listed in one finding's evidence
	topListed            = 5  // biggest pods listed under a full limit
)

func (c *checker) findings() {
	c.infoFindings()
	c.staleKubepods()
	c.pidMaxBelowPodLimits()
	c.usageAbove80()
	c.podsWithoutLimit()
	c.lowNproc()
	c.lowTasksMax()
}

// infoFindings: one line per limit read, so the report shows the whole
// picture (the text output shows them as its table).
func (c *checker) infoFindings() {
	n := c.r.Node
	if n.PidMax > 0 {
		c.add(Finding{Severity: Info, ID: IDLimitPidMax,
			Summary:  fmt.Sprintf("kernel.pid_max = %d; %s tasks on the node%s", n.PidMax, num(n.Tasks), usePct(n.Tasks, n.PidMax)),
			Evidence: []string{c.procFile("sys/kernel/pid_max"), c.procFile("loadavg") + " (4th field: running/total tasks)"},
		})
	}
	if n.ThreadsMax > 0 {
		c.add(Finding{Severity: Info, ID: IDLimitThreadsMax,
			Summary:  fmt.Sprintf("kernel.threads-max = %d; %s tasks on the node%s", n.ThreadsMax, num(n.Tasks), usePct(n.Tasks, n.ThreadsMax)),
			Evidence: []string{c.procFile("sys/kernel/threads-max")},
		})
	}
	for _, cg := range c.r.Cgroups {
		what := cg.Role
		switch cg.Role {
		case RolePod:
			what = "pod " + podLabel(cg.Pod)
		case RoleUnit:
			what = "systemd unit " + cg.Unit
		case RoleQoS:
			what = cg.QoS + " QoS class"
		}
		c.add(Finding{Severity: Info, ID: IDLimitPidsCgroup,
			Summary:  fmt.Sprintf("%s cgroup %s: pids.max %s, pids.current %s%s", what, cg.Path, maxStr(cg.Max), num(cg.Current), usePct(cg.Current, cg.Max)),
			Evidence: []string{c.cgroupFile(cg.Path, "pids.max")},
		})
	}
	for _, u := range c.r.Systemd {
		c.add(Finding{Severity: Info, ID: IDLimitSystemdTasks,
			Summary:  fmt.Sprintf("%s: TasksMax=%s (%s tasks)", u.Unit, u.TasksMax, effStr(u)),
			Evidence: []string{u.Source},
		})
	}
	for _, np := range c.r.Nproc {
		c.add(Finding{Severity: Info, ID: IDLimitNproc,
			Summary:  fmt.Sprintf("nproc (ulimit -u) %s %s for %s at PAM login", np.Type, maxStr(np.Value), domainStr(np.Domain)),
			Evidence: []string{np.Source},
		})
	}
}

// staleKubepods: kubelet writes kubepods' pids.max once, when it starts:
// its node allocatable for "pid", i.e. the node's capacity (kernel.pid_max;
// newer kubelets take the smaller of pid_max and threads-max) minus
// --system-reserved and --kube-reserved pid when set. It does not follow
// later sysctl changes. On a CentOS 7 node pid_max was raised to 1000000, the
// kubelet kept running, /kubepods/pids.max stayed 49152, and pods ran out at
// 49152 while pid_max looked huge. Reservations are normally a small part
// of the capacity, so a value below half of it, or above pid_max, was not
// derived from the current sysctls.
func (c *checker) staleKubepods() {
	k, ok := c.r.kubepodsCgroup()
	pidMax := c.r.Node.PidMax
	if !ok || k.Max < 0 || pidMax <= 0 {
		return
	}
	capacity := pidMax
	if t := c.r.Node.ThreadsMax; t > 0 && t < capacity {
		capacity = t
	}
	var summary string
	switch {
	case k.Max > pidMax:
		summary = fmt.Sprintf("kubepods pids.max %d is above kernel.pid_max %d: kubelet set it from an earlier, larger pid_max and was not restarted since", k.Max, pidMax)
	case k.Max*2 < capacity:
		summary = fmt.Sprintf("kubepods pids.max %d is less than half of kernel.pid_max %d: stale (pid_max raised after kubelet started?); pods' forks fail at %d", k.Max, pidMax, k.Max)
	default:
		return
	}
	ev := []string{
		c.cgroupEvidence(k),
		fmt.Sprintf("kernel.pid_max = %d (%s)", pidMax, c.procFile("sys/kernel/pid_max")),
	}
	if t := c.r.Node.ThreadsMax; t > 0 {
		ev = append(ev, fmt.Sprintf("kernel.threads-max = %d (%s)", t, c.procFile("sys/kernel/threads-max")))
	}
	ev = append(ev, fmt.Sprintf("kubelet derives kubepods pids.max at start from min(pid_max, threads-max) = %d (older kubelets: pid_max), minus --system-reserved/--kube-reserved pid: expected between %d and %d", capacity, (capacity+1)/2, capacity))
	c.add(Finding{
		Severity: Risk,
		ID:       IDStaleKubepods,
		Summary:  summary,
		Evidence: ev,
		Fix:      "restart kubelet (systemctl restart kubelet) so it re-derives kubepods pids.max from kernel.pid_max; or set --system-reserved/--kube-reserved pid explicitly",
	})
}

// pidMaxBelowPodLimits: pid_max is the node's hard ceiling; limits below it
// only help if they add up to less. If they allow more, pods can take every
// PID and the node's own daemons (kubelet, containerd, calico-node, exec
// probes) fail to fork while no pod is at its limit.
func (c *checker) pidMaxBelowPodLimits() {
	k, ok := c.r.kubepodsCgroup()
	pidMax := c.r.Node.PidMax
	if !ok || pidMax <= 0 {
		return
	}
	pidMaxEv := fmt.Sprintf("kernel.pid_max = %d (%s)", pidMax, c.procFile("sys/kernel/pid_max"))
	if k.Max >= 0 {
		if k.Max > pidMax {
			c.add(Finding{
				Severity: Risk,
				ID:       IDPidMaxBelowPods,
				Summary:  fmt.Sprintf("kubepods pids.max %d is above kernel.pid_max %d: pods can use up every PID on the node before their limit stops them", k.Max, pidMax),
				Evidence: []string{c.cgroupEvidence(k), pidMaxEv},
				Fix:      "raise kernel.pid_max above it (sysctl -w kernel.pid_max=4194304, and persist it in /etc/sysctl.d/), or restart kubelet so it re-derives kubepods pids.max from the current pid_max; reserve PIDs for the node's daemons with --system-reserved=pid=N",
			})
		}
		return
	}
	pods := c.r.pods()
	if len(pods) == 0 {
		return
	}
	var sum int64
	for _, p := range pods {
		if p.Max < 0 {
			return // some pod is unlimited: pod-without-pids-limit says so
		}
		sum += p.Max
	}
	if sum <= pidMax {
		return
	}
	ev := []string{
		c.cgroupEvidence(k) + " (unlimited)",
		pidMaxEv,
		fmt.Sprintf("%d pods, their pids.max add up to %d", len(pods), sum),
	}
	sort.SliceStable(pods, func(i, j int) bool { return pods[i].Max > pods[j].Max })
	for i, p := range pods {
		if i == topListed {
			ev = append(ev, fmt.Sprintf("… and %d more pods", len(pods)-topListed))
			break
		}
		ev = append(ev, fmt.Sprintf("pod %s: pids.max %d (%s)", podLabel(p.Pod), p.Max, p.Path))
	}
	c.add(Finding{
		Severity: Risk,
		ID:       IDPidMaxBelowPods,
		Summary:  fmt.Sprintf("the pods' pids.max add up to %d, above kernel.pid_max %d, and kubepods is unlimited: together the pods can take every PID on the node", sum, pidMax),
		Evidence: ev,
		Fix:      "give kubepods a limit below pid_max: set kubelet --system-reserved=pid=N (and/or --kube-reserved=pid=N) with \"pods\" in --enforce-node-allocatable and restart kubelet; or lower --pod-max-pids (podPidsLimit); or raise kernel.pid_max",
	})
}

// usageAbove80: any limit at or above 80% of its maximum: the alert an
// outage's postmortem asked for after a thread leak filled pid_max.
func (c *checker) usageAbove80() {
	n := c.r.Node
	nodeFix := "find who holds the tasks: the pods listed, or run forkwatch to see who creates threads; fix the leak, cap pods with --pod-max-pids, and/or raise the limit"
	for _, l := range []struct {
		name, file string
		max        int64
		fix        string
	}{
		{"kernel.pid_max", "sys/kernel/pid_max", n.PidMax, nodeFix + " (sysctl -w kernel.pid_max=4194304, persisted in /etc/sysctl.d/; then restart kubelet so kubepods pids.max follows)"},
		{"kernel.threads-max", "sys/kernel/threads-max", n.ThreadsMax, nodeFix + " (sysctl -w kernel.threads-max=N, persisted in /etc/sysctl.d/)"},
	} {
		if l.max <= 0 || n.Tasks < 0 || !over(n.Tasks, l.max) {
			continue
		}
		ev := []string{
			fmt.Sprintf("tasks on the node: %d (%s, 4th field)", n.Tasks, c.procFile("loadavg")),
			fmt.Sprintf("%s = %d (%s)", l.name, l.max, c.procFile(l.file)),
		}
		if k, ok := c.r.kubepodsCgroup(); ok && k.Current >= 0 {
			ev = append(ev, fmt.Sprintf("of which in pods (%s pids.current): %d", k.Path, k.Current))
		}
		ev = append(ev, c.topPods("/")...)
		c.add(Finding{
			Severity: Risk,
			ID:       IDUsageAbove80,
			Summary:  fmt.Sprintf("%d tasks on the node, %d%% of %s %d: new threads and processes fail with EAGAIN at the limit", n.Tasks, pct(n.Tasks, l.max), l.name, l.max),
			Evidence: ev,
			Fix:      l.fix,
		})
	}
	for _, cg := range c.r.Cgroups {
		if cg.Max < 0 || cg.Current < 0 || !over(cg.Current, cg.Max) {
			continue
		}
		ev := []string{c.cgroupEvidence(cg)}
		var fix, what string
		switch cg.Role {
		case RolePod:
			what = "pod " + podLabel(cg.Pod)
			fix = "the pod is near its own pids.max (kubelet --pod-max-pids / podPidsLimit): look for a thread or process leak in it (forkwatch --pod NAME, or ps -T), or raise podPidsLimit"
		case RoleUnit:
			what = cg.Unit
			fix = fmt.Sprintf("the unit is near its TasksMax=: check what it runs, or raise it (systemctl edit %s: [Service] TasksMax=infinity; systemctl daemon-reload; systemctl restart %s)", cg.Unit, cg.Unit)
		default:
			what = cg.Role + " cgroup"
			ev = append(ev, c.topPods(cg.Path)...)
			fix = "find the pod holding the tasks (the biggest pids.current below it; forkwatch shows who creates them live) and fix or limit it (--pod-max-pids); if the limit itself is too low for the node, note that kubelet derives kubepods pids.max from pid_max minus --system-reserved/--kube-reserved pid when it starts"
		}
		c.add(Finding{
			Severity: Risk,
			ID:       IDUsageAbove80,
			Summary:  fmt.Sprintf("%s %s uses %d of its pids.max %d (%d%%): forks below it fail with EAGAIN at the limit", what, cg.Path, cg.Current, cg.Max, pct(cg.Current, cg.Max)),
			Evidence: ev,
			Fix:      fix,
		})
	}
}

// podsWithoutLimit: a pod cgroup with pids.max "max" is bounded only by its
// ancestors. With kubepods unlimited too, one pod can take the node.
func (c *checker) podsWithoutLimit() {
	k, ok := c.r.kubepodsCgroup()
	if !ok || k.Max >= 0 {
		return
	}
	var unlimited []Cgroup
	for _, p := range c.r.pods() {
		if p.Max < 0 {
			unlimited = append(unlimited, p)
		}
	}
	if len(unlimited) == 0 {
		return
	}
	ev := []string{c.cgroupEvidence(k) + " (unlimited)"}
	for i, p := range unlimited {
		if i == maxListed {
			ev = append(ev, fmt.Sprintf("… and %d more", len(unlimited)-maxListed))
			break
		}
		ev = append(ev, fmt.Sprintf("pod %s: pids.max max, pids.current %s (%s)", podLabel(p.Pod), num(p.Current), p.Path))
	}
	c.add(Finding{
		Severity: Warning,
		ID:       IDPodWithoutLimit,
		Summary:  fmt.Sprintf("%d pods have no pids limit and neither has kubepods: nothing stops one pod from taking every PID on the node", len(unlimited)),
		Evidence: ev,
		Fix:      "set podPidsLimit (--pod-max-pids) in the kubelet configuration, e.g. 4096, and reserve PIDs for the node with --system-reserved=pid=N so kubepods gets a limit; restart kubelet (pod cgroups created before keep their old limit until the pod is recreated)",
	})
}

// lowNproc: nproc (ulimit -u) below 65536 for "*" or root. See Nproc for
// why it rarely matters: PAM sessions only, "*" never covers root, and the
// kernel does not enforce it for root.
func (c *checker) lowNproc() {
	for _, d := range nprocDomains {
		var soft, hard *Nproc
		for i := range c.r.Nproc {
			n := &c.r.Nproc[i]
			if n.Domain != d {
				continue
			}
			if n.Type == "soft" {
				soft = n
			} else {
				hard = n
			}
		}
		// The soft limit is the one enforced; pam_limits lowers it to the
		// hard limit when it is above.
		var eff *Nproc
		if soft != nil {
			eff = soft
		}
		if hard != nil && hard.Value >= 0 && (eff == nil || eff.Value < 0 || hard.Value < eff.Value) {
			eff = hard
		}
		if eff == nil || eff.Value < 0 || eff.Value >= lowNprocThreshold {
			continue
		}
		var ev []string
		for _, n := range []*Nproc{soft, hard} {
			if n != nil {
				ev = append(ev, fmt.Sprintf("%s %s nproc %s (%s)", n.Domain, n.Type, maxStr(n.Value), n.Source))
			}
		}
		var summary string
		if d == "root" {
			summary = fmt.Sprintf("ulimit -u (nproc) is %d for root: applies only to root's PAM login sessions, and the kernel does not enforce RLIMIT_NPROC for root", eff.Value)
			ev = append(ev, "the kernel skips the RLIMIT_NPROC check for tasks of the host's root user and for CAP_SYS_RESOURCE/CAP_SYS_ADMIN")
		} else {
			summary = fmt.Sprintf("ulimit -u (nproc) is %d for non-root users: applies only to their PAM login sessions (ssh, su, cron), not to root, systemd services or pods", eff.Value)
			ev = append(ev, `pam_limits does not apply "*" lines to root`)
		}
		ev = append(ev, "systemd services take RLIMIT_NPROC from LimitNPROC= in their unit, not from limits.conf")
		c.add(Finding{
			Severity: Warning,
			ID:       IDLowNproc,
			Summary:  summary,
			Evidence: ev,
			Fix:      fmt.Sprintf("only if a daemon started from a login session or cron runs as that user: raise it in a file in %s sorted after the one setting it (e.g. 90-nproc.conf: %s soft nproc 65536); log in again for it to apply", c.cfg.LimitsDir, d),
		})
	}
}

// lowTasksMax: TasksMax= of kubelet/containerd/docker/crio below 10000, or a
// percentage (15% of pid_max 32768 is 4915). It caps only the unit's own
// cgroup: for containerd and dockerd that includes the shims, never the
// containers, which live under kubepods.
func (c *checker) lowTasksMax() {
	for _, u := range c.r.Systemd {
		if !slices.Contains(daemonUnits, u.Unit) {
			continue
		}
		isPct := strings.HasSuffix(u.TasksMax, "%") || strings.HasSuffix(u.TasksMax, "‰")
		if !isPct && (u.Effective <= 0 || u.Effective >= lowTasksMaxThreshold) {
			continue
		}
		ev := []string{fmt.Sprintf("TasksMax=%s (%s)", u.TasksMax, u.Source)}
		if isPct {
			ev = append(ev, fmt.Sprintf("a percentage is of min(pid_max-1, threads-max) = %d: %s tasks", systemTasksMax(c.r.Node), effStr(u)))
		}
		for _, cg := range c.r.Cgroups {
			if cg.Role == RoleUnit && cg.Unit == u.Unit {
				ev = append(ev, "in force now: "+c.cgroupEvidence(cg))
			}
		}
		c.add(Finding{
			Severity: Warning,
			ID:       IDLowTasksMax,
			Summary:  fmt.Sprintf("TasksMax=%s (%s tasks) for %s: applies only to the processes of that unit, not to pods", u.TasksMax, effStr(u), u.Unit),
			Evidence: ev,
			Fix:      fmt.Sprintf("only if %s itself needs more tasks (compare its pids.current): systemctl edit %s, add [Service] TasksMax=infinity, then systemctl daemon-reload && systemctl restart %s", u.Unit, u.Unit, u.Unit),
		})
	}
}

// topPods lists the pods below (or equal to) the cgroup at prefix with the
// most tasks, biggest first.
func (c *checker) topPods(prefix string) []string {
	var pods []Cgroup
	for _, p := range c.r.pods() {
		if p.Current > 0 && under(p.Path, prefix) {
			pods = append(pods, p)
		}
	}
	sort.SliceStable(pods, func(i, j int) bool { return pods[i].Current > pods[j].Current })
	var out []string
	for i, p := range pods {
		if i == topListed {
			break
		}
		out = append(out, fmt.Sprintf("pod %s: %d tasks, pids.max %s (%s)", podLabel(p.Pod), p.Current, maxStr(p.Max), p.Path))
	}
	return out
}

// cgroupEvidence names a cgroup, its numbers and its pids.max file.
func (c *checker) cgroupEvidence(cg Cgroup) string {
	return fmt.Sprintf("cgroup %s: pids.max = %s, pids.current = %s (%s)", cg.Path, maxStr(cg.Max), num(cg.Current), c.cgroupFile(cg.Path, "pids.max"))
}

func under(p, prefix string) bool {
	return prefix == "/" || p == prefix || strings.HasPrefix(p, prefix+"/")
}

// over reports whether used is at or above usageThresholdPct of max.
// pids.max 0 admits no fork at all: always at the limit.
func over(used, max int64) bool {
	return used*100 >= max*usageThresholdPct
}

func pct(used, max int64) int64 {
	if max <= 0 {
		return 100
	}
	return used * 100 / max
}

func usePct(used, max int64) string {
	if used < 0 || max <= 0 {
		return ""
	}
	return fmt.Sprintf(" (%d%%)", pct(used, max))
}

func maxStr(v int64) string {
	if v < 0 {
		return "max"
	}
	return fmt.Sprint(v)
}

func num(v int64) string {
	if v < 0 {
		return "?"
	}
	return fmt.Sprint(v)
}

func effStr(u UnitTasksMax) string {
	switch {
	case u.Effective < 0:
		return "unlimited"
	case u.Effective == 0:
		return "?"
	case strings.HasSuffix(u.TasksMax, "%") || strings.HasSuffix(u.TasksMax, "‰"):
		return fmt.Sprintf("≈%d", u.Effective)
	}
	return fmt.Sprint(u.Effective)
}

func domainStr(d string) string {
	if d == "*" {
		return `"*" (non-root users)`
	}
	return d
}
