package limits

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeFiles creates files (path relative to dir → content) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// cgroup adds a fake cgroup at rel with the given pids.current and
// pids.max ("max" for unlimited).
func cgroup(files map[string]string, rel string, current int, max string) {
	files[filepath.Join(rel, "pids.current")] = strconv.Itoa(current) + "\n"
	files[filepath.Join(rel, "pids.max")] = max + "\n"
}

func TestReadNode(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"sys/kernel/pid_max":     "1000000\n",
		"sys/kernel/threads-max": "192730\n",
		"loadavg":                "0.52 0.58 0.59 3/49152 12345\n",
	})
	n, err := ReadNode(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := Node{PidMax: 1000000, ThreadsMax: 192730, Tasks: 49152}
	if n != want {
		t.Fatalf("ReadNode = %+v, want %+v", n, want)
	}
}

func TestReadNodeErrors(t *testing.T) {
	good := map[string]string{
		"sys/kernel/pid_max":     "32768\n",
		"sys/kernel/threads-max": "192730\n",
		"loadavg":                "0.00 0.01 0.05 1/101 32519\n",
	}
	for _, tc := range []struct {
		name, file, content, want string
	}{
		{"pid_max not a number", "sys/kernel/pid_max", "lots\n", "pid_max"},
		{"loadavg short", "loadavg", "0.00 0.01 0.05\n", "4 fields"},
		{"loadavg no slash", "loadavg", "0.00 0.01 0.05 101 32519\n", "running/total"},
		{"loadavg total not a number", "loadavg", "0.00 0.01 0.05 1/x 32519\n", "loadavg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{}
			for k, v := range good {
				files[k] = v
			}
			files[tc.file] = tc.content
			writeFiles(t, dir, files)
			if _, err := ReadNode(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadNode: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("missing threads-max", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"sys/kernel/pid_max": "32768\n", "loadavg": good["loadavg"]})
		if _, err := ReadNode(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("ReadNode: %v, want ErrNotExist", err)
		}
	})
}

// fakeV1 is a v1-shaped pids hierarchy: no pids files at the root.
func fakeV1(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{"cgroup.procs": "1\n"}
	cgroup(files, "kubepods", 49152, "49152")
	cgroup(files, "kubepods/burstable", 40000, "max")
	cgroup(files, "kubepods/burstable/pod22612ffb-4523-4958-b6dd-a80bd35fd325", 30000, "max")
	cgroup(files, "kubepods/burstable/pod22612ffb-4523-4958-b6dd-a80bd35fd325/8e8c5f5293", 29999, "max")
	cgroup(files, "kubepods/besteffort", 9152, "max")
	cgroup(files, "kubepods/podaaaa", 0, "4096")
	cgroup(files, "system.slice", 300, "max")
	cgroup(files, "system.slice/kubelet.service", 80, "4915")
	writeFiles(t, dir, files)
	return dir
}

func TestReadPids(t *testing.T) {
	root := fakeV1(t)
	for _, tc := range []struct {
		rel  string
		want Pids
	}{
		{"/", Pids{Path: "/", Current: -1, Max: -1}},
		{"", Pids{Path: "/", Current: -1, Max: -1}},
		{"/kubepods", Pids{Path: "/kubepods", Current: 49152, Max: 49152}},
		{"kubepods/burstable/", Pids{Path: "/kubepods/burstable", Current: 40000, Max: -1}},
		{"/system.slice/kubelet.service", Pids{Path: "/system.slice/kubelet.service", Current: 80, Max: 4915}},
	} {
		got, err := ReadPids(root, tc.rel)
		if err != nil {
			t.Fatalf("ReadPids(%q): %v", tc.rel, err)
		}
		if got != tc.want {
			t.Errorf("ReadPids(%q) = %+v, want %+v", tc.rel, got, tc.want)
		}
	}
}

func TestReadPidsV2Root(t *testing.T) {
	// Newer kernels show pids.current on the v2 root; pids.max never is.
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"cgroup.controllers": "cpu memory pids\n", "pids.current": "812\n"})
	got, err := ReadPids(dir, "/")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Pids{Path: "/", Current: 812, Max: -1}); got != want {
		t.Fatalf("ReadPids = %+v, want %+v", got, want)
	}
}

func TestReadPidsErrors(t *testing.T) {
	root := fakeV1(t)
	writeFiles(t, root, map[string]string{
		"nocontroller/cgroup.procs": "",
		"bad/pids.current":          "1\n",
		"bad/pids.max":              "lots\n",
	})
	if _, err := ReadPids(root, "/gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing cgroup: %v, want ErrNotExist", err)
	}
	if _, err := ReadPids(root, "/nocontroller"); !errors.Is(err, ErrNoPidsFiles) {
		t.Errorf("cgroup without pids files: %v, want ErrNoPidsFiles", err)
	}
	if _, err := ReadPids(root, "/bad"); err == nil || !strings.Contains(err.Error(), `"lots"`) {
		t.Errorf("bad pids.max: %v", err)
	}
}

func TestAncestors(t *testing.T) {
	root := fakeV1(t)
	ctr := "/kubepods/burstable/pod22612ffb-4523-4958-b6dd-a80bd35fd325/8e8c5f5293"
	got, err := Ancestors(root, ctr)
	if err != nil {
		t.Fatal(err)
	}
	want := []Pids{
		{ctr, 29999, -1},
		{"/kubepods/burstable/pod22612ffb-4523-4958-b6dd-a80bd35fd325", 30000, -1},
		{"/kubepods/burstable", 40000, -1},
		{"/kubepods", 49152, 49152},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Ancestors =\n%+v\nwant\n%+v", got, want)
	}
	// Seed 000: dmesg names the container, the limit that refused is /kubepods.
	n, ok := Nearest(got)
	if !ok || n.Path != "/kubepods" {
		t.Fatalf("Nearest = %+v, %v; want /kubepods", n, ok)
	}

	if got, err := Ancestors(root, "/"); err != nil || len(got) != 0 {
		t.Fatalf("Ancestors(/) = %v, %v; want none", got, err)
	}
	if _, err := Ancestors(root, "/kubepods/gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Ancestors of a missing cgroup: %v, want ErrNotExist", err)
	}
}

// On v2 the controller is only in the subtree where it was enabled: cgroups
// above or outside it have no pids files and are skipped.
func TestAncestorsV2Skip(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"cgroup.controllers":       "cpu memory pids\n",
		"outer/cgroup.procs":       "",
		"outer/inner/cgroup.procs": "",
	}
	cgroup(files, "outer/inner/limited", 5, "10")
	cgroup(files, "outer/inner/limited/leaf", 5, "max")
	writeFiles(t, dir, files)
	// The files say "outer" and "outer/inner" lack the controller while
	// "limited" has it, which v2 itself would not allow (the parent must
	// enable it); the reader does not care.
	got, err := Ancestors(dir, "/outer/inner/limited/leaf")
	if err != nil {
		t.Fatal(err)
	}
	want := []Pids{{"/outer/inner/limited/leaf", 5, -1}, {"/outer/inner/limited", 5, 10}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Ancestors = %+v, want %+v", got, want)
	}
}

func TestNearest(t *testing.T) {
	for _, tc := range []struct {
		name string
		ps   []Pids
		want string
		ok   bool
	}{
		{"none", nil, "", false},
		{"all unlimited", []Pids{{"/a", 5, -1}, {"/", -1, -1}}, "", false},
		{"least headroom wins", []Pids{{"/a/b", 10, 100}, {"/a", 50, 60}, {"/x", 0, 5}}, "/x", true},
		{"tie: first (leaf) wins", []Pids{{"/a/b", 10, 20}, {"/a", 90, 100}}, "/a/b", true},
		{"over the limit is negative headroom", []Pids{{"/a/b", 10, 20}, {"/a", 120, 100}}, "/a", true},
		{"unknown current counts as empty", []Pids{{"/a", -1, 3}, {"/b", 0, 4}}, "/a", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Nearest(tc.ps)
			if ok != tc.ok || got.Path != tc.want {
				t.Fatalf("Nearest = %+v, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func paths(ps []Pids) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Path)
	}
	return out
}

func TestTree(t *testing.T) {
	root := fakeV1(t)
	got, err := Tree(root, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/",
		"/kubepods",
		"/kubepods/besteffort",
		"/kubepods/burstable",
		"/kubepods/burstable/pod22612ffb-4523-4958-b6dd-a80bd35fd325",
		"/kubepods/podaaaa",
		"/system.slice",
		"/system.slice/kubelet.service",
	}
	if !slices.Equal(paths(got), want) {
		t.Fatalf("Tree(3) =\n%v\nwant\n%v", paths(got), want)
	}
	if got[1] != (Pids{"/kubepods", 49152, 49152}) || got[0] != (Pids{"/", -1, -1}) {
		t.Fatalf("Tree values: %+v", got[:2])
	}

	got, err = Tree(root, 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/", "/kubepods", "/system.slice"}; !slices.Equal(paths(got), want) {
		t.Fatalf("Tree(1) = %v, want %v", paths(got), want)
	}
	got, err = Tree(root, 0)
	if err != nil || !slices.Equal(paths(got), []string{"/"}) {
		t.Fatalf("Tree(0) = %v, %v", paths(got), err)
	}
	if _, err := Tree(filepath.Join(root, "nonexistent"), 3); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Tree of a missing root: %v", err)
	}
}

// systemd driver shape on v2: the controller is enabled down to the pods,
// and a cgroup without pids files is not descended into.
func TestTreeV2SystemdShape(t *testing.T) {
	dir := t.TempDir()
	pod := "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod22612ffb_4523_4958_b6dd_a80bd35fd325.slice"
	files := map[string]string{
		"cgroup.controllers":                     "cpu memory pids\n",
		"pids.current":                           "700\n",
		"init.scope/cgroup.procs":                "1\n",
		"init.scope/child-without-pids/pids.max": "7\n", // not reachable: parent has no controller
	}
	cgroup(files, "kubepods.slice", 600, "1048576")
	cgroup(files, "kubepods.slice/kubepods-burstable.slice", 600, "max")
	cgroup(files, pod, 600, "max")
	cgroup(files, pod+"/cri-containerd-0123.scope", 599, "max")
	writeFiles(t, dir, files)
	got, err := Tree(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []Pids{
		{"/", 700, -1},
		{"/kubepods.slice", 600, 1048576},
		{"/kubepods.slice/kubepods-burstable.slice", 600, -1},
		{"/" + pod, 600, -1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Tree =\n%+v\nwant\n%+v", got, want)
	}
}

// requireRealPids returns the real pids hierarchy and whether it is v2, or
// skips (fails under CI=true) when the test cannot create cgroups there.
func requireRealPids(t *testing.T) (string, bool) {
	t.Helper()
	skip := func(reason string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s, and CI=true forbids skipping", reason)
		}
		t.Skip(reason)
	}
	if os.Geteuid() != 0 {
		skip("needs root to create cgroups under the real pids hierarchy")
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
		return "/sys/fs/cgroup/pids", false
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && slices.Contains(strings.Fields(string(b)), "pids") {
		return "/sys/fs/cgroup", true
	}
	skip("no cgroup hierarchy with the pids controller on this machine")
	return "", false
}

// Against the kernel: a real cgroup tree with a process in its leaf.
func TestRealCgroup(t *testing.T) {
	root, v2 := requireRealPids(t)
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	top := "/forkwatch-limits-test-" + hex.EncodeToString(b)
	a, leaf := top+"/a", top+"/a/b"
	abs := func(rel string) string { return filepath.Join(root, rel) }

	// Removed deepest first once the test ends (after the process below
	// has been killed: cleanups run last-registered first).
	t.Cleanup(func() {
		for _, rel := range []string{leaf, a, top} {
			var err error
			for try := 0; try < 50; try++ {
				if err = os.Remove(abs(rel)); err == nil || errors.Is(err, fs.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond) // a killed task leaves the cgroup asynchronously
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("removing test cgroup: %v", err)
			}
		}
	})
	for _, rel := range []string{top, a, leaf} {
		if v2 {
			// A v2 child only gets pids files if its parent enables the
			// controller for its children.
			parent := filepath.Dir(abs(rel))
			_ = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+pids"), 0)
		}
		if err := os.Mkdir(abs(rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	setMax := func(rel, v string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(abs(rel), "pids.max"), []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	setMax(top, "100")
	setMax(a, "50")

	// A process in the leaf: it is charged to the leaf and every ancestor.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(abs(leaf), "cgroup.procs"), []byte(fmt.Sprint(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}

	p, err := ReadPids(root, leaf)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Pids{leaf, 1, -1}); p != want {
		t.Fatalf("ReadPids(leaf) = %+v, want %+v", p, want)
	}
	anc, err := Ancestors(root, leaf)
	if err != nil {
		t.Fatal(err)
	}
	want := []Pids{{leaf, 1, -1}, {a, 1, 50}, {top, 1, 100}}
	// On v2 the cgroups above top belong to the machine: compare only ours.
	if len(anc) < 3 || !reflect.DeepEqual(anc[:3], want) {
		t.Fatalf("Ancestors = %+v, want %+v first", anc, want)
	}
	if v1Extra := anc[3:]; !v2 && len(v1Extra) != 0 {
		t.Fatalf("Ancestors went past the test's top cgroup: %+v", v1Extra)
	}
	if n, ok := Nearest(anc[:3]); !ok || n.Path != a {
		t.Fatalf("Nearest = %+v, %v; want %s", n, ok, a)
	}
	setMax(leaf, "3")
	anc, err = Ancestors(root, leaf)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := Nearest(anc); !ok || n != (Pids{leaf, 1, 3}) {
		t.Fatalf("after pids.max=3 on the leaf: Nearest = %+v, %v", n, ok)
	}
	setMax(leaf, "max")

	tree, err := Tree(root, 3)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(tree, func(p Pids) bool { return p.Path == top })
	if tree[0].Path != "/" || i < 0 || i+2 >= len(tree) ||
		!reflect.DeepEqual(tree[i:i+3], []Pids{{top, 1, 100}, {a, 1, 50}, {leaf, 1, -1}}) {
		t.Fatalf("Tree does not hold the test's cgroups in order: %+v", tree)
	}
	tree, err = Tree(root, 2)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(tree, func(p Pids) bool { return p.Path == leaf }) {
		t.Fatalf("Tree(2) went to depth 3: %+v", tree)
	}
}

// A Reader reads a shared ancestor once for all the pods below it, and
// takes values the caller already has: what it returns is what it read or
// was given, not the files' later state.
func TestReaderRemembers(t *testing.T) {
	root := fakeV1(t)
	pod := "/kubepods/burstable/pod22612ffb-4523-4958-b6dd-a80bd35fd325"
	r := &Reader{Root: root}
	if _, err := r.Ancestors(pod); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, map[string]string{"kubepods/pids.current": "1\n", "kubepods/burstable/pids.current": "2\n"})
	r.Set("/kubepods/burstable", Pids{Path: "/kubepods/burstable", Current: 7, Max: 10}, nil)
	got, err := r.Ancestors(pod + "/8e8c5f5293")
	if err != nil {
		t.Fatal(err)
	}
	want := []Pids{
		{pod + "/8e8c5f5293", 29999, -1},
		{pod, 30000, -1},
		{"/kubepods/burstable", 7, 10},
		{"/kubepods", 49152, 49152},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Ancestors =\n%+v\nwant\n%+v", got, want)
	}
	// A new Reader reads the files as they are now.
	if got, _ := (&Reader{Root: root}).Read("/kubepods"); got.Current != 1 {
		t.Fatalf("a new Reader read /kubepods at %d, want 1", got.Current)
	}
}
