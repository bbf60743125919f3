// Command smoke shows that test/vm works: run inside a guest by test/vm/run.sh,
// it prints what forkwatch's end-to-end tests rely on (kernel, cgroup layout,
// BTF, the syscall tracepoints) and exits 0 when the cgroup layout is the one
// run.sh was asked for (FORKWATCH_VM_CGROUP), 1 otherwise.
//
// Build it static: CGO_ENABLED=0 go build -o bin/smoke ./test/vm/smoke
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
)

// Filesystem magic numbers (statfs(2), linux/magic.h).
const (
	cgroup2Magic = 0x63677270
	cgroupMagic  = 0x27e0eb
	tmpfsMagic   = 0x01021994
)

const (
	btfPath       = "/sys/kernel/btf/vmlinux"
	exitClonePath = "/sys/kernel/tracing/events/syscalls/sys_exit_clone"
)

func main() {
	os.Exit(run(os.Stdout, os.Getenv("FORKWATCH_VM_CGROUP")))
}

func run(w io.Writer, want string) int {
	fmt.Fprintf(w, "uname: %s\n", uname())
	got := cgroupLayout()
	fmt.Fprintf(w, "cgroup layout: %s (expected %q)\n", got, want)
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		fmt.Fprintf(w, "/proc/self/cgroup: %s\n", strings.Join(strings.Fields(string(b)), " "))
	}
	fmt.Fprintf(w, "%s: %s\n", btfPath, presence(btfPath))
	fmt.Fprintf(w, "%s: %s\n", exitClonePath, presence(exitClonePath))
	if want == "" {
		fmt.Fprintln(w, "FAIL: FORKWATCH_VM_CGROUP is not set (run me through test/vm/run.sh)")
		return 1
	}
	if got != want {
		fmt.Fprintf(w, "FAIL: cgroup layout is %s, want %s\n", got, want)
		return 1
	}
	fmt.Fprintln(w, "OK")
	return 0
}

func uname() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "error: " + err.Error()
	}
	return strings.Join([]string{chars(u.Sysname[:]), chars(u.Nodename[:]),
		chars(u.Release[:]), chars(u.Version[:]), chars(u.Machine[:])}, " ")
}

func chars(a []int8) string {
	var b strings.Builder
	for _, c := range a {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}

func presence(path string) string {
	if _, err := os.Stat(path); err != nil {
		return "missing"
	}
	return "present"
}

func fsMagic(path string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0
	}
	return st.Type
}

// cgroupLayout names what is mounted at /sys/fs/cgroup: "v2" (cgroup2 there,
// with the pids controller available), "hybrid" (a tmpfs holding cgroup2 at
// unified/ and the v1 pids hierarchy at pids/), or a description of anything else.
func cgroupLayout() string {
	switch fsMagic("/sys/fs/cgroup") {
	case cgroup2Magic:
		b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		if err != nil || !slices.Contains(strings.Fields(string(b)), "pids") {
			return "v2 without the pids controller"
		}
		return "v2"
	case tmpfsMagic:
		unified := fsMagic("/sys/fs/cgroup/unified") == cgroup2Magic
		pids := fsMagic("/sys/fs/cgroup/pids") == cgroupMagic && hasMountOption("/sys/fs/cgroup/pids", "pids")
		switch {
		case unified && pids:
			return "hybrid"
		case pids:
			return "v1 (no cgroup2 at unified/)"
		default:
			return "tmpfs without a v1 pids hierarchy"
		}
	case 0:
		return "nothing mounted"
	default:
		return fmt.Sprintf("unknown filesystem %#x", fsMagic("/sys/fs/cgroup"))
	}
}

// hasMountOption reports whether the mount at dir has opt among its
// superblock options (/proc/self/mountinfo, the field after the source).
func hasMountOption(dir, opt string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		pre, post, ok := strings.Cut(s.Text(), " - ")
		fields, rest := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || fields[4] != dir || len(rest) < 3 {
			continue
		}
		if slices.Contains(strings.Split(rest[2], ","), opt) {
			return true
		}
	}
	return false
}
