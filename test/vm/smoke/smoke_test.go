package main

// These tests run inside a test/vm guest, as a `go test -c` binary:
//
//	CGO_ENABLED=0 go test -c -o bin/smoke.test ./test/vm/smoke
//	test/vm/run.sh --kernel 6.1 --file bin/smoke.test:/bin/smoke.test -- /bin/smoke.test -test.v
//
// Outside a guest (no FORKWATCH_VM_CGROUP) they skip.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// inGuest skips the test unless it runs in a guest of test/vm/run.sh and
// returns the cgroup layout the guest was booted with.
func inGuest(t *testing.T) string {
	t.Helper()
	layout := os.Getenv("FORKWATCH_VM_CGROUP")
	if layout == "" {
		t.Skip("not in a test/vm guest (FORKWATCH_VM_CGROUP unset)")
	}
	return layout
}

func TestReport(t *testing.T) {
	layout := inGuest(t)
	var out bytes.Buffer
	code := run(&out, layout)
	t.Logf("\n%s", out.String())
	if code != 0 {
		t.Errorf("run() = %d, want 0", code)
	}
}

// TestProcSelfCgroup: v2 has the single "0::/" line; hybrid adds the v1 pids
// hierarchy.
func TestProcSelfCgroup(t *testing.T) {
	layout := inGuest(t)
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(b))
	t.Logf("/proc/self/cgroup: %q", lines)
	hasV1Pids := false
	for _, l := range lines {
		if parts := strings.SplitN(l, ":", 3); len(parts) == 3 && parts[1] == "pids" {
			hasV1Pids = true
		}
	}
	switch layout {
	case "v2":
		if len(lines) != 1 || lines[0] != "0::/" {
			t.Errorf("want only 0::/ on cgroup v2, got %q", lines)
		}
	case "hybrid":
		if !hasV1Pids || !strings.Contains(string(b), "0::/") {
			t.Errorf("want a v1 pids line and 0::/ on hybrid, got %q", lines)
		}
	default:
		t.Fatalf("unknown FORKWATCH_VM_CGROUP %q", layout)
	}
}

// TestPidsLimit makes a fork fail for real: a shell in a child cgroup with
// pids.max 1 cannot start a command.
func TestPidsLimit(t *testing.T) {
	layout := inGuest(t)
	root := map[string]string{"v2": "/sys/fs/cgroup", "hybrid": "/sys/fs/cgroup/pids"}[layout]
	dir := filepath.Join(root, fmt.Sprintf("smoke-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := os.Remove(dir); err != nil {
			t.Error(err)
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	// /bin/true is not the last command, so the shell must fork for it.
	cmd := exec.Command("/bin/sh", "-c", `echo $$ >"$1/cgroup.procs" && /bin/true && echo forked`, "sh", dir)
	out, err := cmd.CombinedOutput()
	t.Logf("sh in %s with pids.max 1: %v: %s", dir, err, out)
	if err == nil || strings.Contains(string(out), "forked") {
		t.Fatal("the fork succeeded despite pids.max 1")
	}
	events, err := os.ReadFile(filepath.Join(dir, "pids.events"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(events), "max 1") {
		t.Errorf("pids.events = %q, want max 1", events)
	}
}

// TestGuestSetup checks what run.sh's /init promises.
func TestGuestSetup(t *testing.T) {
	inGuest(t)
	mounts := map[string]int64{
		"/tmp":                tmpfsMagic,
		"/sys/kernel/tracing": 0x74726163, // TRACEFS_MAGIC
		"/sys/fs/bpf":         0xcafe4a11, // BPF_FS_MAGIC
		"/sys/kernel/debug":   0x64626720, // DEBUGFS_MAGIC
	}
	for dir, magic := range mounts {
		if got := fsMagic(dir); got != magic {
			t.Errorf("%s: filesystem %#x, want %#x", dir, got, magic)
		}
	}
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil || !strings.Contains(string(passwd), "nobody:x:65534:65534:") {
		t.Errorf("/etc/passwd lacks nobody (65534): %q %v", passwd, err)
	}
	// IFF_UP is bit 0 of the interface flags.
	flags, err := os.ReadFile("/sys/class/net/lo/flags")
	if err != nil {
		t.Fatal(err)
	}
	if f, err := strconv.ParseUint(strings.TrimSpace(string(flags)), 0, 32); err != nil || f&1 == 0 {
		t.Errorf("lo is not up: flags %q", strings.TrimSpace(string(flags)))
	}
	if os.Getenv("CI") != "" {
		t.Logf("CI=%s came through", os.Getenv("CI"))
	}
	t.Logf("kernel name %q", os.Getenv("FORKWATCH_VM_KERNEL"))
}
