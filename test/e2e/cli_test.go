package e2e

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Bad input: one line on stderr naming the problem and the fix, exit code 2,
// no goroutine dump, nothing left attached.
func TestBadInput(t *testing.T) {
	requireRoot(t)
	notCgroup := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--frobnicate"}, "unknown flag: --frobnicate"},
		{"bad output", []string{"-o", "yaml"}, "must be text or json"},
		{"bad mode", []string{"--mode", "ebpf"}, "must be one of"},
		{"bad duration", []string{"--duration", "forever"}, "--duration"},
		{"cgroup root not a cgroup fs", []string{"--cgroup-root", notCgroup}, "is not a cgroup filesystem"},
		{"missing pod logs dir", []string{"--pod-logs-dir", "/nonexistent/pods"}, "--pod-logs-dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkUsageError(t, exec.Command(forkwatchBin, tc.args...), tc.want)
		})
	}
	t.Run("metrics address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		checkUsageError(t, exec.Command(forkwatchBin, "--metrics-addr", ln.Addr().String()), "address already in use")
	})
	t.Run("tracefs unavailable", func(t *testing.T) {
		// A private mount namespace where /sys/kernel is an empty tmpfs:
		// no tracefs, and nowhere to mount one.
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			t.Fatal("needs unshare (util-linux)")
		}
		cmd := exec.Command(unshare, "--mount", "sh", "-c", "mount -t tmpfs none /sys/kernel && exec \"$0\"", forkwatchBin)
		checkUsageError(t, cmd, "mount -t tracefs tracefs /sys/kernel/tracing")
	})
	t.Run("not root", func(t *testing.T) {
		cmd := exec.Command(forkwatchBin, "--duration", "1s")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		checkUsageError(t, cmd, "needs root")
	})
}

func checkUsageError(t *testing.T, cmd *exec.Cmd, want string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit: %v, want code 2\nstderr: %s", err, stderr.String())
	}
	msg := stderr.String()
	if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "forkwatch: ") || !strings.Contains(msg, want) {
		t.Fatalf("stderr %q: want one line starting \"forkwatch: \" containing %q", msg, want)
	}
	if stdout.Len() > 0 {
		t.Fatalf("bad input, yet output on stdout: %q", stdout.String())
	}
	if progs := loadedForkwatchPrograms(t); len(progs) > 0 {
		t.Fatalf("programs left loaded: %v", progs)
	}
}

// --duration ends the run by itself, detaches, exits 0.
func TestDurationDetaches(t *testing.T) {
	requireRoot(t)
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(forkwatchBin, append([]string{"-o", "json", "--duration", "1s", "--ready-file", ready}, modeArgs()...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("forkwatch --duration 1s: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), `"event":"attached"`) {
		t.Fatalf("no attached event in %q", stdout.String())
	}
	if _, err := os.Stat(ready); !os.IsNotExist(err) {
		t.Fatalf("ready file left behind (%v)", err)
	}
	if progs := loadedForkwatchPrograms(t); len(progs) > 0 {
		t.Fatalf("programs left loaded after --duration: %v", progs)
	}
}
