package tracer

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Where the pids controller counts its refusals: the BPF side's pids_events.
const (
	pidsEventsNone    uint8 = 0 // before 4.8
	pidsEventsForking uint8 = 1 // in the forking cgroup: pids.events
	pidsEventsLimit   uint8 = 2 // in the refusing cgroup: pids.events.local
)

// pidsEventsKind says where the running kernel counts pids refusals, and in
// which file of a cgroup userspace reads that count. Since 6.12 a cgroup v2
// hierarchy counts each refusal in the cgroup whose limit refused
// (pids.events.local), unless mounted with pids_localevents; v1, older
// kernels and pids_localevents count it in the cgroup of the forking task
// (pids.events).
func pidsEventsKind(types *btf.Spec, v2 bool, root string) (uint8, string) {
	var pc *btf.Struct
	if types == nil || types.TypeByName("pids_cgroup", &pc) != nil {
		return pidsEventsNone, ""
	}
	has := func(name string) bool {
		for _, m := range pc.Members {
			if m.Name == name {
				return true
			}
		}
		return false
	}
	switch {
	case has("events_local"):
		if v2 && !mountOption(root, "pids_localevents") {
			return pidsEventsLimit, "pids.events.local"
		}
		return pidsEventsForking, "pids.events"
	case has("events_limit"):
		return pidsEventsForking, "pids.events"
	}
	return pidsEventsNone, ""
}

// mountOption reports whether the filesystem mounted at dir has the option
// among its superblock options (/proc/self/mountinfo).
func mountOption(dir, option string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - type source superoptions
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[4] != dir {
			continue
		}
		for i, fld := range fields {
			if fld == "-" && i+3 < len(fields) {
				for _, o := range strings.Split(fields[i+3], ",") {
					if o == option {
						return true
					}
				}
			}
		}
	}
	return false
}

// seedRefusalCounts hands the BPF side the refusals each cgroup's pids
// controller had counted before forkwatch attached: they were claimed by
// failures forkwatch never saw. Only cgroups that ever refused get an entry.
func seedRefusalCounts(m *ebpf.Map, root, file string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		n := readRefusalCount(filepath.Join(path, file))
		if n == 0 {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil {
			return nil
		}
		if err := m.Put(st.Ino, n); err != nil {
			return fmt.Errorf("seeding the pids refusal counts: %w", err)
		}
		return nil
	})
}

// readRefusalCount parses the "max N" line of pids.events or
// pids.events.local; 0 when absent (the root, a cgroup without the
// controller).
func readRefusalCount(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "max "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// cgroup2Mount returns where the cgroup v2 hierarchy's root is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid node), or "".
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[3] != "/" {
			continue
		}
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4]
			}
		}
	}
	return ""
}

// jobLimitChanges is the optional job of seeing kernel.threads-max and
// kernel.pid_max change at the moment they are written.
const jobLimitChanges = "limit changes"

// attachSysctlWatch attaches the program that copies writes of
// kernel.threads-max and kernel.pid_max into the BPF side's node limits as
// they happen (see fw_sysctl in bpf/). Without it the copy follows
// within a second (RefreshNodeLimits), so a failure is a Fallback, not an
// error.
func (t *Tracer) attachSysctlWatch(l *loader) {
	fallback := func(reason string) {
		t.fallbacks = append(t.fallbacks, Fallback{Mode: t.mode, Job: jobLimitChanges, Reason: reason})
	}
	dir := cgroup2Mount()
	if dir == "" {
		fallback("cgroup/sysctl: no cgroup v2 hierarchy is mounted")
		return
	}
	prog, err := l.program(forkwatchProgFwSysctl)
	if err != nil {
		fallback("cgroup/sysctl: " + short(err))
		return
	}
	lk, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupSysctl, Program: prog})
	if err != nil {
		prog.Close()
		fallback("cgroup/sysctl " + dir + ": " + short(err))
		return
	}
	t.progs = append(t.progs, prog)
	t.links = append(t.links, lk)
	t.attached = append(t.attached, Attachment{Program: forkwatchProgFwSysctl, Hook: "cgroup/sysctl:" + dir, Mode: t.mode})
}

// RefusalCounts says where the kernel counts the pids controller's
// refusals: the file of each cgroup (pids.events or pids.events.local, ""
// where it keeps no count), and whether it counts them in the refusing
// cgroup (else in the forking task's).
func (t *Tracer) RefusalCounts() (file string, inRefusingCgroup bool) {
	return t.refusalFile, t.refusalInLimit
}

// ReadRefusalCount is a cgroup's refusal count in file (see
// RefusalCounts): the "max" line of pids.events or pids.events.local.
func ReadRefusalCount(path string) uint64 { return readRefusalCount(path) }
