package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// buildGlibc returns test/glibc/<src> built as a static glibc program
// (gcc -static -O2 -pthread), named after the source without ".c". With
// FORKWATCH_GLIBC_DIR set it takes the binary from there instead: test/vm's
// guest has no gcc, the host builds them for it. Without gcc the test skips,
// or fails under CI=true.
func buildGlibc(t *testing.T, src string) string {
	t.Helper()
	name := strings.TrimSuffix(src, ".c")
	if dir := os.Getenv("FORKWATCH_GLIBC_DIR"); dir != "" {
		bin := filepath.Join(dir, name)
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("FORKWATCH_GLIBC_DIR: %v", err)
		}
		return bin
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		if isCI() {
			t.Fatal("needs gcc to build test/glibc, and CI=true forbids skipping (or set FORKWATCH_GLIBC_DIR)")
		}
		t.Skip("needs gcc to build test/glibc (or FORKWATCH_GLIBC_DIR with the built programs)")
	}
	srcPath, err := filepath.Abs(filepath.Join("..", "glibc", src))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(gcc, "-static", "-O2", "-pthread", "-Wall", "-o", bin, srcPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", src, err, out)
	}
	return bin
}

// glibcSummary is what test/glibc/threads and test/glibc/forker print.
type glibcSummary struct {
	PID         int            `json:"pid"`
	Threads     int            `json:"threads"`  // threads: created, all alive at once
	Children    int            `json:"children"` // forker: children alive when it gave up
	Failures    int            `json:"failures"` // pthread_create or fork calls that failed
	Errnos      map[string]int `json:"errnos"`
	Clone3Errno string         `json:"clone3_errno"` // threads: what clone3 with no arguments returned
}

func parseGlibcSummary(t *testing.T, what string, out []byte) glibcSummary {
	t.Helper()
	var s glibcSummary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("%s printed %q: %v", what, out, err)
	}
	return s
}

// runThreads runs test/glibc/threads with args to completion; it must
// exit 0, whatever its thread creations met.
func runThreads(t *testing.T, bin string, args ...string) glibcSummary {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("threads %v: %v\n%s", args, err, stderr.String())
	}
	return parseGlibcSummary(t, fmt.Sprintf("threads %v", args), out)
}

func intOrNil(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

// A glibc program in a pod whose seccomp profile refuses clone3 with
// ENOSYS, as Docker's and containerd's default profiles do: glibc 2.34+
// tries clone3 for every thread and falls back to clone. The refused
// clone3 never reaches copy_process() and is no fork failure: forkwatch
// reports nothing, neither a failure nor a victim, for 300 threads that
// each began with one. Then the same program at the pod's pids limit: the
// fallback clones the limit refuses (pthread_create returns EAGAIN) are
// reported, each as pids_cgroup with the pod and container, exactly as many
// as the kernel counted — and still no clone3. The program copes and exits
// 0: no victim either.
func TestGlibcSeccompClone3ENOSYS(t *testing.T) {
	requireRoot(t)
	threads := buildGlibc(t, "threads.c")
	tr := newTestTree(t)
	p := pod{Namespace: "shop", Name: "cart-7d9", UID: newPodUID()}
	ctr := randomHex(32)
	podCg := tr.base + "/kubepods/besteffort/pod" + p.UID
	ctrCg := podCg + "/" + ctr
	tr.mkdir(ctrCg)

	fw := startForkwatch(t, "-o", "json", "--pod-logs-dir", podLogsDir(t, p))

	free := runThreads(t, threads, "--seccomp-clone3-enosys", "--cgroup", filepath.Join(tr.root, ctrCg), "300")
	if free.Clone3Errno != "ENOSYS" {
		t.Fatalf("clone3 returned %s under the filter, want ENOSYS: %+v", free.Clone3Errno, free)
	}
	if free.Threads != 300 || free.Failures != 0 {
		t.Fatalf("threads created %d of 300 threads with no limit: %+v", free.Threads, free)
	}

	const max, attempts = 20, 50
	tr.setMax(podCg, max)
	full := runThreads(t, threads, "--seccomp-clone3-enosys", "--cgroup", filepath.Join(tr.root, ctrCg), strconv.Itoa(attempts))
	if full.Clone3Errno != "ENOSYS" {
		t.Fatalf("clone3 returned %s under the filter, want ENOSYS: %+v", full.Clone3Errno, full)
	}
	// The process and max-1 threads fill the pod.
	if full.Threads != max-1 || full.Failures != attempts-full.Threads || full.Errnos["EAGAIN"] != full.Failures {
		t.Fatalf("threads at a pids.max of %d: %+v; want %d threads and the other %d refused with EAGAIN", max, full, max-1, attempts-(max-1))
	}
	refused := int(pidsRefusals(t, tr, podCg))
	if refused != full.Failures {
		t.Fatalf("pids.events counts %d refusals, pthread_create saw %d", refused, full.Failures)
	}

	ofFull := func(e event) bool { return e.Event == "fork_failed" && e.PID == full.PID }
	fw.waitFor(fmt.Sprintf("%d refused clones", refused), func() bool {
		n := 0
		for _, e := range fw.events(ofFull) {
			if e.Cause == "pids_cgroup" {
				n++
			}
		}
		return n >= refused
	})
	fw.stop() // drains what the kernel handed over

	mine := func(e event) bool {
		return e.PID == free.PID || e.PID == full.PID || e.Cgroup == ctrCg || e.ContainerID == ctr
	}
	var clone3 []string
	for _, e := range fw.events(mine) {
		if e.Syscall == "clone3" || e.Errno == "ENOSYS" {
			clone3 = append(clone3, fmt.Sprintf("%s pid %d %s %s cause %q", e.Event, e.PID, e.Syscall, e.Errno, e.Cause))
		}
	}
	if len(clone3) > 0 {
		t.Fatalf("forkwatch reported %d clone3 calls the seccomp filter refused with ENOSYS (glibc tried clone3 before each of %d thread creations): no fork failure; first: %s",
			len(clone3), free.Threads+full.Threads+full.Failures, clone3[0])
	}
	for _, e := range fw.events(mine) {
		if e.PID == free.PID {
			t.Fatalf("forkwatch reported %s for threads %d, which created its 300 threads with no limit: %+v", e.Event, free.PID, e)
		}
	}
	for _, x := range slices.DeleteFunc(exits(fw), func(x exitObject) bool { return x.PID != full.PID && x.PID != free.PID }) {
		t.Fatalf("forkwatch reported threads %d as a victim of %d failed %s calls, yet it exited 0 (exit_code %v, signal %q)",
			x.PID, x.Failures, x.FailedSyscall, intOrNil(x.ExitCode), x.Signal)
	}
	got := fw.events(ofFull)
	if len(got) != refused {
		t.Fatalf("forkwatch reported %d failures of threads %d, the kernel refused %d clones", len(got), full.PID, refused)
	}
	for _, e := range got {
		if e.Syscall != "clone" || e.Errno != "EAGAIN" || e.Ret != -11 || e.Comm != "threads" {
			t.Fatalf("failure %+v: want glibc's fallback clone by threads failing with EAGAIN (-11)", e)
		}
		if e.Cause != "pids_cgroup" || e.Limit == nil || e.Limit.Cgroup != podCg || e.Limit.Max != max || e.Limit.Current != max {
			t.Fatalf("cause %q, limit %+v; want pids_cgroup at %s, %d/%d", e.Cause, e.Limit, podCg, max, max)
		}
		if e.Cgroup != ctrCg || e.Pod == nil || *e.Pod != p || e.ContainerID != ctr {
			t.Fatalf("cgroup %q, pod %+v, container_id %q; want %s, %+v, %s", e.Cgroup, e.Pod, e.ContainerID, ctrCg, p, ctr)
		}
	}
	t.Logf("300 threads behind a refused clone3: nothing reported; at pids.max %d: %d threads, %d clones refused (pids.events), %d reported", max, full.Threads, refused, len(got))
}
