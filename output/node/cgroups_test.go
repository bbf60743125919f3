package node

import (
	"os"
	"path/filepath"
	"testing"
)

// A directory laid out like a cgroup tree but not a cgroup filesystem is a
// Copy: forkwatch doctor reads it, the watcher refuses it.
func TestDetectCgroupRootCopy(t *testing.T) {
	dir := t.TempDir()
	if root, err := DetectCgroupRoot(dir); err != nil || root.V2 || !root.Copy {
		t.Fatalf("plain dir: %+v, %v", root, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte("pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if root, err := DetectCgroupRoot(dir); err != nil || !root.V2 || !root.Copy {
		t.Fatalf("dir with cgroup.controllers: %+v, %v", root, err)
	}
	if _, err := DetectCgroupRoot(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing dir accepted")
	}
}
