package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pidsHierarchy returns the mount holding the pids controller and whether it
// is cgroup v2: the v1 pids hierarchy if mounted, as forkwatch picks.
func pidsHierarchy() (string, bool, error) {
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
		return "/sys/fs/cgroup/pids", false, nil
	}
	b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err == nil && slices.Contains(strings.Fields(string(b)), "pids") {
		return "/sys/fs/cgroup", true, nil
	}
	return "", false, errors.New("no cgroup hierarchy with the pids controller")
}

// mkdir creates a cgroup and its parents below the bench's; on v2 it enables
// the pids controller from the root down to its parent.
func (e *env) mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !e.v2 {
		return nil
	}
	rel, err := filepath.Rel(e.root, dir)
	if err != nil {
		return err
	}
	p := e.root
	for _, c := range strings.Split(rel, "/") {
		if err := os.WriteFile(filepath.Join(p, "cgroup.subtree_control"), []byte("+pids"), 0); err != nil {
			return fmt.Errorf("enabling pids below %s: %w", p, err)
		}
		p = filepath.Join(p, c)
	}
	return nil
}

// fakePod makes what kubelet would for a pod: its cgroup
// <base>/kubepods/[qos/]pod<uid>/<container id> and its log directory
// <namespace>_<name>_<uid>. It returns the container's cgroup.
func (e *env) fakePod(qos, namespace, name string) (podDir, ctrDir string, err error) {
	uid := newUID()
	parent := filepath.Join(e.base, "kubepods", qos)
	podDir = filepath.Join(parent, "pod"+uid)
	ctrDir = filepath.Join(podDir, randHex(32))
	if err := e.mkdir(ctrDir); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(filepath.Join(e.podLogs, namespace+"_"+name+"_"+uid, "app"), 0o755); err != nil {
		return "", "", err
	}
	return podDir, ctrDir, nil
}

func writeFile(path, value string) error {
	return os.WriteFile(path, []byte(value), 0)
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// removeTree kills whatever is left in a cgroup tree and removes it, deepest
// first. It gives up on a cgroup after a few seconds and says so.
func removeTree(top string) {
	var dirs []string
	_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		// A full cgroup holds nothing back from being emptied, but lift
		// the limit anyway so that nothing dies of it on the way out.
		_ = writeFile(filepath.Join(dirs[i], "pids.max"), "max")
		for try := 0; ; try++ {
			b, _ := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			err := os.Remove(dirs[i])
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			if try == 250 {
				fmt.Fprintf(os.Stderr, "bench: could not remove cgroup %s: %v\n", dirs[i], err)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// newUID returns a random pod UID as kubelet writes it.
func newUID() string {
	h := randHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// manyPods returns n pod cgroups (their container cgroups), made once and
// shared by the sections that need a populated node.
func (e *env) manyPods(n int) ([]string, error) {
	for len(e.pods) < n {
		_, ctr, err := e.fakePod("besteffort", "many", fmt.Sprintf("pod-%d", len(e.pods)))
		if err != nil {
			return nil, err
		}
		e.pods = append(e.pods, ctr)
	}
	return e.pods[:n], nil
}
