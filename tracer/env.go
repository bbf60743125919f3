package tracer

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Capabilities (include/uapi/linux/capability.h). CAP_BPF and CAP_PERFMON
// split BPF loading and tracing off CAP_SYS_ADMIN in 5.8.
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// CheckPrivileges returns an error naming what is missing when the process
// cannot load and attach tracing programs.
func CheckPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	return errors.New("needs root (or CAP_BPF and CAP_PERFMON, CAP_SYS_ADMIN before kernel 5.8) to load its BPF programs; run it with sudo")
}

// EnsureTracefs mounts tracefs at /sys/kernel/tracing when neither it nor
// debugfs's tracing directory is there: tracepoints and kprobes are attached
// through it. Kernels before 4.1 (CentOS 7's 3.10) have no tracefs: their
// tracing directory is in debugfs, mounted at /sys/kernel/debug.
func EnsureTracefs() error {
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(dir + "/events"); err == nil {
			return nil
		}
	}
	err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, "")
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) {
		if unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "") == nil {
			if _, serr := os.Stat("/sys/kernel/debug/tracing/events"); serr == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("tracefs is not mounted and mounting it at /sys/kernel/tracing failed (%v); mount it: mount -t tracefs tracefs /sys/kernel/tracing (before Linux 4.1: mount -t debugfs debugfs /sys/kernel/debug)", err)
}
