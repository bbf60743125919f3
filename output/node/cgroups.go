package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkwatch/forkwatch/output/node/kube"
)

// Where kubelet and systemd mount the cgroup hierarchies. On a cgroup v1 (or
// hybrid) node the pids controller has its own hierarchy; on a v2 node it is
// part of the unified one.
const (
	cgroupV1PidsRoot = "/sys/fs/cgroup/pids"
	cgroupV2Root     = "/sys/fs/cgroup"
)

// CgroupRoot is the root of the hierarchy forkwatch's cgroup paths and ids
// refer to: the one holding the pids controller.
type CgroupRoot struct {
	Path string
	V2   bool
	// Copy is set for a directory that is not a cgroup filesystem but laid
	// out like one (a copy of a node's tree): forkwatch doctor reads it,
	// the tracer cannot (its cgroup ids are the kernel's).
	Copy bool
}

// DetectCgroupRoot returns the pids hierarchy: dir if given, else the v1
// pids hierarchy if mounted (CentOS 7, hybrid nodes), else the v2 one. A
// given dir that is not a cgroup filesystem is a Copy, v2 when its top
// holds cgroup.controllers, which only v2 has.
func DetectCgroupRoot(dir string) (CgroupRoot, error) {
	if dir != "" {
		fi, err := os.Stat(dir)
		if err != nil {
			return CgroupRoot{}, err
		}
		if !fi.IsDir() {
			return CgroupRoot{}, fmt.Errorf("%s is not a directory", dir)
		}
		if v2, err := isCgroupFS(dir); err == nil {
			return CgroupRoot{Path: dir, V2: v2}, nil
		}
		_, err = os.Stat(filepath.Join(dir, "cgroup.controllers"))
		return CgroupRoot{Path: dir, V2: err == nil, Copy: true}, nil
	}
	if v2, err := isCgroupFS(cgroupV1PidsRoot); err == nil && !v2 {
		return CgroupRoot{Path: cgroupV1PidsRoot}, nil
	}
	v2, err := isCgroupFS(cgroupV2Root)
	if err != nil {
		return CgroupRoot{}, fmt.Errorf("no cgroup hierarchy with the pids controller found: %w", err)
	}
	return CgroupRoot{Path: cgroupV2Root, V2: v2}, nil
}

// isCgroupFS reports whether dir is the root of a cgroup v2 (true) or v1
// (false) mount, or an error saying what it is instead.
func isCgroupFS(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("%s: %w", dir, err)
	}
	switch st.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		return true, nil
	case unix.CGROUP_SUPER_MAGIC:
		return false, nil
	}
	return false, fmt.Errorf("%s is not a cgroup filesystem", dir)
}

// CgroupPaths maps cgroup ids to paths below a hierarchy's root. A cgroup's id
// is the inode number of its directory, so the map is built by walking the
// hierarchy; a miss re-walks it, at most once per MinRescan. Each walk rebuilds
// the map, so it holds only cgroups that exist: its size follows the node's
// cgroups, not their churn.
type CgroupPaths struct {
	root      string
	MinRescan time.Duration

	mu       sync.Mutex
	byID     map[uint64]string
	lastScan time.Time
}

// NewCgroupPaths returns an id→path map for the hierarchy mounted at root.
func NewCgroupPaths(root string) *CgroupPaths {
	return &CgroupPaths{root: root, MinRescan: time.Second}
}

// Path returns the path of cgroup id relative to the root ("/" for the root).
func (c *CgroupPaths) Path(id uint64) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.byID[id]; ok {
		return p, true
	}
	if time.Since(c.lastScan) < c.MinRescan {
		return "", false
	}
	c.scan()
	p, ok := c.byID[id]
	return p, ok
}

func (c *CgroupPaths) scan() {
	byID := make(map[uint64]string, len(c.byID))
	_ = filepath.WalkDir(c.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			// A cgroup removed during the walk: skip it, keep walking.
			if errors.Is(err, fs.ErrNotExist) && path != c.root {
				return fs.SkipDir
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fs.SkipDir
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel, _ := filepath.Rel(c.root, path)
		byID[st.Ino] = filepath.Clean("/" + rel)
		return nil
	})
	c.byID = byID
	c.lastScan = time.Now()
}

// PodCgroups returns the pod-level cgroups of the pod with this UID, by id.
// A miss rescans the hierarchy (at most once per MinRescan): a pod started a
// moment ago is found on a later call.
func (c *CgroupPaths) PodCgroups(uid string) map[uint64]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	find := func() map[uint64]string {
		found := map[uint64]string{}
		for id, p := range c.byID {
			if info := kube.ParseCgroupPath(p); info.PodUID == uid && info.PodCgroup == p {
				found[id] = p
			}
		}
		return found
	}
	if found := find(); len(found) > 0 || time.Since(c.lastScan) < c.MinRescan {
		return found
	}
	c.scan()
	return find()
}
