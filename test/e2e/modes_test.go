package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// modesBestFirst are the modes auto chooses from, best first.
var modesBestFirst = []string{"fentry", "kprobe", "tracepoint"}

// runFor runs forkwatch for a second with args (plus FORKWATCH_RINGBUF and
// FORKWATCH_BTF, not FORKWATCH_MODE) and returns its attached object, or its
// exit code and stderr when it did not run. The attached object's line is
// in stderr's place when it ran.
func runFor(t *testing.T, cmd *exec.Cmd) (attached *event, code int, stderr string) {
	t.Helper()
	var stdout, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return nil, exit.ExitCode(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(stdout.String(), "\n") {
		var e event
		if json.Unmarshal([]byte(l), &e) == nil && e.Event == "attached" {
			return &e, 0, l
		}
	}
	t.Fatalf("no attached object in %q", stdout.String())
	return nil, 0, ""
}

// otherModeArgs are modeArgs without --mode.
func otherModeArgs() []string {
	args := modeArgs()
	if i := slices.Index(args, "--mode"); i >= 0 {
		args = slices.Delete(args, i, i+2)
	}
	return args
}

// Each mode either attaches in that mode or, on a kernel that cannot run
// it, is refused with one line naming the mode, exit code 2 and nothing left
// loaded; auto picks the best mode that runs. On this project's CI machine
// (6.18) fentry is refused (EPERM) and there are no kprobes: auto picks
// tracepoint. test/vm runs this on kernels where all three work, and says
// so in FORKWATCH_EXPECT_MODES.
func TestModes(t *testing.T) {
	requireRoot(t)
	works := map[string]bool{}
	for _, mode := range append(slices.Clone(modesBestFirst), "auto") {
		args := append([]string{"--mode", mode, "-o", "json", "--duration", "1s", "--pod-logs-dir", t.TempDir()}, otherModeArgs()...)
		attached, code, out := runFor(t, exec.Command(forkwatchBin, args...))
		switch {
		case attached != nil && mode == "auto":
			want := ""
			for _, m := range modesBestFirst {
				if works[m] {
					want = m
					break
				}
			}
			if attached.Mode != want {
				t.Errorf("auto attached in %s mode, want %s, the best that runs here", attached.Mode, want)
			}
			t.Logf("auto: %s", out)
		case attached != nil:
			if attached.Mode != mode {
				t.Errorf("--mode %s attached in %s mode", mode, attached.Mode)
			}
			works[mode] = true
			t.Logf("%s: runs", mode)
		case code == 2 && mode != "auto":
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "forkwatch: this kernel cannot run "+mode+" mode: ") {
				t.Errorf("--mode %s refused with %q: want one line saying why", mode, out)
			}
			t.Logf("%s: unsupported: %s", mode, strings.TrimSpace(out))
		default:
			t.Errorf("--mode %s: exit code %d\n%s", mode, code, out)
		}
		if progs := loadedForkwatchPrograms(t); len(progs) > 0 {
			t.Fatalf("--mode %s left programs loaded: %v", mode, progs)
		}
	}
	if !works["tracepoint"] && !works["kprobe"] {
		t.Error("neither tracepoint nor kprobe mode runs: forkwatch supports kernels from 3.10 on")
	}
	// Where the kernel is known (test/vm's cells: Debian's cloud kernels
	// take all three), a mode it should take and refuses is a regression,
	// not a kernel's limit.
	for _, m := range strings.Fields(os.Getenv("FORKWATCH_EXPECT_MODES")) {
		if !works[m] {
			t.Errorf("--mode %s was refused, but this kernel (%s) runs it", m, os.Getenv("FORKWATCH_VM_KERNEL"))
		}
	}
}

// On a kernel without BTF of its own (CentOS 7), forkwatch names BTFHub
// and, given a BTF file with --btf, runs: shown here by hiding
// /sys/kernel/btf in a private mount namespace.
func TestBTFFromFile(t *testing.T) {
	requireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal("needs unshare (util-linux)")
	}
	src, err := os.Open("/sys/kernel/btf/vmlinux")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	file := filepath.Join(t.TempDir(), "vmlinux.btf")
	dst, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()

	withoutBTF := func(args ...string) *exec.Cmd {
		return exec.Command(unshare, append([]string{"--mount", "sh", "-c", `mount -t tmpfs none /sys/kernel/btf && exec "$@"`, "sh", forkwatchBin}, args...)...)
	}
	t.Run("no BTF", func(t *testing.T) {
		checkUsageError(t, withoutBTF("--duration", "1s"), "BTFHub (https://github.com/aquasecurity/btfhub-archive")
	})
	t.Run("BTF file", func(t *testing.T) {
		mode := os.Getenv("FORKWATCH_MODE")
		args := []string{"-o", "json", "--duration", "1s", "--pod-logs-dir", t.TempDir(), "--btf", file}
		if mode != "" {
			args = append(args, "--mode", mode)
		}
		if os.Getenv("FORKWATCH_RINGBUF") == "off" {
			args = append(args, "--perf-buffer")
		}
		attached, code, stderr := runFor(t, withoutBTF(args...))
		if attached == nil && mode == "fentry" {
			// Trampolines attach by the kernel's own BTF ids, and a kernel
			// without BTF has no trampolines: refused, in one line.
			if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "fentry") {
				t.Fatalf("--mode fentry with --btf and no kernel BTF: exit code %d, want 2 and one line naming fentry:\n%s", code, stderr)
			}
			t.Logf("fentry without the kernel's BTF: %s", strings.TrimSpace(stderr))
			return
		}
		if attached == nil {
			t.Fatalf("with --btf and no kernel BTF: exit code %d\n%s", code, stderr)
		}
		t.Logf("without kernel BTF, with --btf: %s mode", attached.Mode)
	})
	t.Run("bad BTF file", func(t *testing.T) {
		junk := filepath.Join(t.TempDir(), "junk.btf.tar.xz")
		if err := os.WriteFile(junk, []byte("not BTF at all"), 0o644); err != nil {
			t.Fatal(err)
		}
		checkUsageError(t, exec.Command(forkwatchBin, "--btf", junk, "--duration", "1s"), "not a BTF file")
		checkUsageError(t, exec.Command(forkwatchBin, "--btf", "/nonexistent/vmlinux", "--duration", "1s"), "--btf: stat /nonexistent/vmlinux: no such file")
	})
}
