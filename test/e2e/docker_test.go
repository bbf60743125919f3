package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dockerdBin  = "/usr/sbin/dockerd"
	dockerBin   = "/usr/bin/docker" // Debian's client; /usr/local/bin/docker may be another program
	busyboxBin  = "/bin/busybox"    // busybox-static: the image's /bin/sh
	dockerImage = "forkwatch-e2e:glibc"
)

// requireDocker skips where there is no Docker engine to start: test/vm's
// guest (FORKWATCH_VM=1), or a machine without dockerd. Under CI=true a
// missing engine on the host is a failure.
func requireDocker(t *testing.T) {
	t.Helper()
	if os.Getenv("FORKWATCH_VM") == "1" {
		t.Skip("test/vm's guest has no Docker engine")
	}
	for _, b := range []string{dockerdBin, dockerBin, busyboxBin} {
		if _, err := os.Stat(b); err != nil {
			if isCI() {
				t.Fatalf("needs %s, and CI=true forbids skipping: %v", b, err)
			}
			t.Skipf("needs %s: %v", b, err)
		}
	}
}

// dockerd is a private Docker engine: its own data root, exec root, socket,
// containerd (dockerd starts one when not given --containerd) and cgroup
// parent, so it shares nothing with an engine the machine may run.
type dockerd struct {
	t            *testing.T
	dir          string // data root, exec root, socket, log
	cgroupParent string // the containers' cgroups are its children, in every hierarchy
	cmd          *exec.Cmd
	log          *os.File
	done         chan struct{}
	env          []string
}

// startDockerd starts dockerd with its containers' cgroups under
// /forkwatch-e2e-<random>/docker, as a node's dockerd puts them under
// /docker, and waits until it answers. Its cleanup, registered before
// anything is started, removes the containers, stops dockerd (SIGTERM,
// then SIGKILL), ends whatever it left running (containerd, shims: by PID,
// found by its directory), unmounts what it mounted, removes its directory
// and its cgroups in every hierarchy (runc makes a container's in each).
func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	// Short: containerd's sockets live in it (108-byte limit).
	dir, err := os.MkdirTemp("", "fw-docker-")
	if err != nil {
		t.Fatal(err)
	}
	top := "/forkwatch-e2e-" + randomHex(4)
	d := &dockerd{t: t, dir: dir, cgroupParent: top + "/docker", done: make(chan struct{})}
	_, err = os.Lstat("/run/containerd")
	runContainerd := err != nil // containerd's shims put their sockets there, whatever its root
	t.Cleanup(func() { d.cleanup(top, runContainerd) })

	// Its own configuration, not /etc/docker/daemon.json; its identity key
	// (dockerd 20.10 makes one) not in /etc/docker/key.json.
	conf := fmt.Sprintf("{\"deprecated-key-path\": %q}\n", filepath.Join(dir, "key.json"))
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	d.env = append(os.Environ(),
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin:"+os.Getenv("PATH"), // runc, containerd, its shim
		"DOCKER_CONFIG="+filepath.Join(dir, "client"),           // not ~/.docker
	)
	if d.log, err = os.Create(filepath.Join(dir, "dockerd.log")); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(dockerdBin,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--host", "unix://"+filepath.Join(dir, "docker.sock"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--storage-driver", "vfs",
		"--exec-opt", "native.cgroupdriver=cgroupfs",
		"--cgroup-parent", d.cgroupParent,
	)
	d.cmd.Env = d.env
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()

	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := d.docker(nil, "version"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("dockerd did not answer within 60s: %v\n%s", err, d.logTail())
		}
		select {
		case <-d.done:
			t.Fatalf("dockerd exited at start: %v\n%s", d.cmd.ProcessState, d.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return d
}

// docker runs the client against this engine and returns its stdout; the
// error carries its stderr.
func (d *dockerd) docker(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerBin, append([]string{"-H", "unix://" + filepath.Join(d.dir, "docker.sock")}, args...)...)
	cmd.Env = d.env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %w\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// must is docker that fails the test with the client's stderr and the end
// of dockerd's log.
func (d *dockerd) must(stdin []byte, args ...string) string {
	d.t.Helper()
	out, err := d.docker(stdin, args...)
	if err != nil {
		d.t.Fatalf("%v\ndockerd:\n%s", err, d.logTail())
	}
	return strings.TrimSpace(out)
}

// logs is a container's stdout and stderr, for a failure message.
func (d *dockerd) logs(id string) string {
	cmd := exec.Command(dockerBin, "-H", "unix://"+filepath.Join(d.dir, "docker.sock"), "logs", id)
	cmd.Env = d.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("docker logs %s: %v\n%s", id, err, out)
	}
	return string(out)
}

// logTail is the end of dockerd's log (its containerd's included).
func (d *dockerd) logTail() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// importImage builds an image with no base: files (name → host path) at
// the root, and busybox as /bin/sh and /bin/sleep.
func (d *dockerd) importImage(tag string, files map[string]string) {
	d.t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = time.Unix(0, 0)
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			d.t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			d.t.Fatal(err)
		}
	}
	files["bin/busybox"] = busyboxBin
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755}, nil)
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil)
	for _, name := range names {
		b, err := os.ReadFile(files[name])
		if err != nil {
			d.t.Fatal(err)
		}
		add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755}, b)
	}
	for _, link := range []string{"bin/sh", "bin/sleep"} {
		add(&tar.Header{Typeflag: tar.TypeSymlink, Name: link, Linkname: "busybox", Mode: 0o777}, nil)
	}
	if err := tw.Close(); err != nil {
		d.t.Fatal(err)
	}
	d.must(buf.Bytes(), "import", "-", tag)
}

// cgroupOf returns the pids cgroup (relative to the hierarchy's root) of
// a running container's init.
func (d *dockerd) cgroupOf(id string, v2 bool) string {
	d.t.Helper()
	pid := d.must(nil, "inspect", "-f", "{{.State.Pid}}", id)
	b, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
	if err != nil {
		d.t.Fatalf("container %s, pid %s: %v", id, pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && (v2 && f[0] == "0" || !v2 && slices.Contains(strings.Split(f[1], ","), "pids")) {
			return f[2]
		}
	}
	d.t.Fatalf("no pids cgroup for container %s (pid %s): %q", id, pid, b)
	return ""
}

func (d *dockerd) cleanup(cgroupTop string, runContainerd bool) {
	t := d.t
	if d.cmd != nil && d.cmd.Process != nil {
		select {
		case <-d.done:
		default:
			if ids, err := d.docker(nil, "ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
				if _, err := d.docker(nil, append([]string{"rm", "-f"}, strings.Fields(ids)...)...); err != nil {
					t.Errorf("removing containers: %v", err)
				}
			}
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(30 * time.Second):
				t.Errorf("dockerd did not exit within 30s of SIGTERM: killed")
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		}
	}
	// dockerd stops its containerd; a shim outlives both while its
	// container runs. Whatever still runs from this directory is ended,
	// and a killed shim's socket removed.
	var left, sockets []string
	for try := 0; try < 100; try++ {
		if left = processesUsing(d.dir); len(left) == 0 {
			break
		}
		if try == 50 {
			for _, p := range left {
				f := strings.Fields(p)
				pid, _ := strconv.Atoi(f[0])
				_ = syscall.Kill(pid, syscall.SIGKILL)
				if sock := shimSocket(f[1:]); sock != "" {
					sockets = append(sockets, sock)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("processes of the private dockerd left running: %q", left)
	}
	for _, sock := range sockets {
		_ = os.Remove(sock)
	}
	removeCgroups(t, cgroupTop)
	unmountUnder(t, d.dir)
	if d.log != nil {
		d.log.Close()
	}
	if err := os.RemoveAll(d.dir); err != nil {
		t.Errorf("removing dockerd's directory: %v", err)
	}
	if runContainerd { // created by this engine's shims: removed if empty
		_ = os.Remove("/run/containerd/s")
		_ = os.Remove("/run/containerd")
	}
}

// shimSocket is where containerd-shim-runc-v2 with the command line args
// listens (containerd 1.6: /run/containerd/s/, named by a hash of its
// containerd's address, namespace and container ID), or "" if args are
// not a shim's.
func shimSocket(args []string) string {
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return ""
	}
	flags := map[string]string{}
	for i := 1; i+1 < len(args); i++ {
		if strings.HasPrefix(args[i], "-") {
			flags[strings.TrimLeft(args[i], "-")] = args[i+1]
		}
	}
	if flags["address"] == "" || flags["namespace"] == "" || flags["id"] == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(filepath.Join(flags["address"], flags["namespace"], flags["id"])))
	return filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:]))
}

// processesUsing lists "PID cmdline" of the processes whose command line
// names dir.
func processesUsing(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		out = append(out, e.Name()+" "+strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
	}
	return out
}

// removeCgroups removes rel and what is below it in every cgroup
// hierarchy, killing what is left in it, deepest first.
func removeCgroups(t *testing.T, rel string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		i := slices.Index(f, "-")
		if i < 0 || i+1 >= len(f) || (f[i+1] != "cgroup" && f[i+1] != "cgroup2") {
			continue
		}
		if top := filepath.Join(f[4], rel); !removeCgroupTree(top) {
			t.Errorf("could not remove cgroup %s", top)
		}
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	var mounts []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmounting %s: %v", m, err)
		}
	}
}

// Containers started by a real Docker engine with its default seccomp
// profile, which refuses clone3 with ENOSYS (so that glibc falls back to
// clone, whose flags the profile can check).
//
// A: a glibc program creating 300 threads: each thread is a refused clone3
// and a clone. The refused clone3 is no fork failure: forkwatch reports
// nothing from the container.
//
// B: a container with --pids-limit 20 whose program forks until fork has
// failed 50 times, then gives up (exit 1): every refusal is reported as
// pids_cgroup with the container's full ID and its limit, as many as the
// container cgroup's pids.events counts, and the program as their victim.
func TestDockerDefaultSeccomp(t *testing.T) {
	requireRoot(t)
	requireDocker(t)
	threads, forker := buildGlibc(t, "threads.c"), buildGlibc(t, "forker.c")
	root, v2 := pidsHierarchy(t)
	d := startDockerd(t)
	d.importImage(dockerImage, map[string]string{"threads": threads, "forker": forker})

	fw := startForkwatch(t, "-o", "json")

	// A. No --security-opt: Docker's default profile.
	a := d.must(nil, "run", "-d", "--network", "none", dockerImage, "/threads", "300")
	if code := d.must(nil, "wait", a); code != "0" {
		t.Fatalf("threads in container %s exited %s\n%s", a, code, d.logs(a))
	}
	s := parseGlibcSummary(t, "threads in a container", []byte(d.must(nil, "logs", a)))
	if s.Clone3Errno != "ENOSYS" {
		t.Fatalf("clone3 in a container returned %s, want ENOSYS from Docker's default seccomp profile: %+v", s.Clone3Errno, s)
	}
	if s.Threads != 300 || s.Failures != 0 {
		t.Fatalf("threads in a container created %d of 300 threads: %+v", s.Threads, s)
	}

	// B. runc removes a container's cgroup as soon as its init exits, so
	// the init is a shell that runs forker and then holds the cgroup until
	// the test has read its pids.events.
	const limit, failures = 20, 50
	b := d.must(nil, "run", "-d", "--network", "none", "--pids-limit", strconv.Itoa(limit), dockerImage,
		"/bin/sh", "-c", fmt.Sprintf(`/forker %d; echo "forker exited $?"; exec sleep 3600`, failures))
	var summary, exit string
	for deadline := time.Now().Add(60 * time.Second); exit == ""; time.Sleep(100 * time.Millisecond) {
		lines := strings.Split(d.must(nil, "logs", b), "\n")
		if len(lines) == 2 && strings.HasPrefix(lines[1], "forker exited ") {
			summary, exit = lines[0], strings.TrimPrefix(lines[1], "forker exited ")
		} else if time.Now().After(deadline) {
			t.Fatalf("forker did not finish within 60s:\n%s", d.logs(b))
		}
	}
	f := parseGlibcSummary(t, "forker in a container", []byte(summary))
	if exit != "1" || f.Failures != failures || f.Errnos["EAGAIN"] != failures {
		t.Fatalf("forker at --pids-limit %d exited %s: %+v; want exit 1 after %d forks refused with EAGAIN", limit, exit, f, failures)
	}
	cg := d.cgroupOf(b, v2)
	if cg != d.cgroupParent+"/"+b {
		t.Fatalf("container %s runs in cgroup %s", b, cg)
	}
	refused := int(pidsRefusals(t, &testTree{root: root, v2: v2}, cg))
	if refused != failures {
		t.Fatalf("%s/pids.events counts %d refusals, forker saw %d", cg, refused, failures)
	}
	d.must(nil, "kill", b)

	inB := func(e event) bool { return e.Event == "fork_failed" && e.ContainerID == b }
	notB := func(x exitObject) bool { return x.ContainerID != b }
	fw.waitFor(fmt.Sprintf("%d failures and their victim", refused), func() bool {
		return len(fw.events(inB)) >= refused && len(slices.DeleteFunc(exits(fw), notB)) > 0
	})
	fw.stop() // drains what the kernel handed over

	fromA := fw.events(func(e event) bool { return e.ContainerID == a || strings.Contains(e.Cgroup, a) })
	if len(fromA) > 0 {
		e := fromA[0]
		t.Fatalf("forkwatch reported %d objects from container A, whose 300 threads each began with a clone3 the seccomp profile refused with ENOSYS; first: %s %s %s cause %q",
			len(fromA), e.Event, e.Syscall, e.Errno, e.Cause)
	}
	got := fw.events(inB)
	if len(got) != refused {
		t.Fatalf("forkwatch reported %d failures in container %s, its pids.events counts %d", len(got), b, refused)
	}
	for _, e := range got {
		if e.Syscall != "clone" || e.Errno != "EAGAIN" || e.Ret != -11 || e.Comm != "forker" {
			t.Fatalf("failure %+v: want fork (a clone) by forker failing with EAGAIN (-11)", e)
		}
		if e.Cause != "pids_cgroup" || e.Limit == nil || e.Limit.Cgroup != cg || e.Limit.Max != limit || e.Limit.Current != limit {
			t.Fatalf("cause %q, limit %+v; want pids_cgroup at %s, %d/%d", e.Cause, e.Limit, cg, limit, limit)
		}
		if e.Cgroup != cg || e.Pod != nil {
			t.Fatalf("cgroup %q, pod %+v; want %s and no pod", e.Cgroup, e.Pod, cg)
		}
	}
	v := slices.DeleteFunc(exits(fw), notB)
	if len(v) != 1 || v[0].Comm != "forker" || v[0].ExitCode == nil || *v[0].ExitCode != 1 || v[0].Failures != refused || v[0].FailedSyscall != "clone" {
		var got []string
		for _, x := range v {
			got = append(got, fmt.Sprintf("%s pid %d exit_code %v signal %q after %d failed %s", x.Comm, x.PID, intOrNil(x.ExitCode), x.Signal, x.Failures, x.FailedSyscall))
		}
		t.Fatalf("victims in container %s: %q; want forker alone, exit code 1 after %d failed clones", b, got, refused)
	}
	t.Logf("A: 300 threads behind refused clone3s, nothing reported; B: %d refusals in pids.events, %d reported, victim forker exit code %d after %d",
		refused, len(got), *v[0].ExitCode, v[0].Failures)
}
