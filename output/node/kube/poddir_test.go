package kube

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParsePodLogDirName(t *testing.T) {
	tests := []struct {
		name string
		want Pod
		ok   bool
	}{
		{"kube-system_coredns-5d78c9869d-x7k2p_" + uid, Pod{"kube-system", "coredns-5d78c9869d-x7k2p", uid}, true},
		{"default_web-0_" + uid2, Pod{"default", "web-0", uid2}, true},
		{"kube-system_etcd-cp1.example.com_" + static, Pod{"kube-system", "etcd-cp1.example.com", static}, true},
		{"a_b_" + uid, Pod{"a", "b", uid}, true},
		{"ns_" + strings.Repeat("a", 64) + "_" + uid, Pod{}, false}, // each label of a subdomain is at most 63
		{"ns_" + strings.Repeat("a.", 126) + "a_" + uid, Pod{"ns", strings.Repeat("a.", 126) + "a", uid}, true},
		{strings.Repeat("n", 63) + "_p_" + uid, Pod{strings.Repeat("n", 63), "p", uid}, true},

		{"", Pod{}, false},
		{"default_web-0", Pod{}, false},
		{"default_" + uid, Pod{}, false},
		{"_web-0_" + uid, Pod{}, false},
		{"default__" + uid, Pod{}, false},
		{"default_web-0_", Pod{}, false},
		{"default_web-0_" + uid + "_x", Pod{}, false},
		{"default_web_0_" + uid, Pod{}, false},
		{"Default_web-0_" + uid, Pod{}, false},
		{"default_Web-0_" + uid, Pod{}, false},
		{"default_web-0_" + strings.ToUpper(uid), Pod{}, false},
		{"default_web-0_" + uid[:35], Pod{}, false},
		{"default_web-0_" + uidSD, Pod{}, false},
		{"default_web-0_not-a-uid", Pod{}, false},
		{"-default_web-0_" + uid, Pod{}, false},
		{"default-_web-0_" + uid, Pod{}, false},
		{"my.ns_web-0_" + uid, Pod{}, false}, // namespaces are labels: no dots
		{"default_web-_" + uid, Pod{}, false},
		{"default_.web_" + uid, Pod{}, false},
		{"default_web..0_" + uid, Pod{}, false},
		{"default_web-0._" + uid, Pod{}, false},
		{strings.Repeat("n", 64) + "_p_" + uid, Pod{}, false},
		{"ns_" + strings.Repeat("a.", 127) + "a_" + uid, Pod{}, false}, // 255 chars
		{"default_web 0_" + uid, Pod{}, false},
		{"default_wéb_" + uid, Pod{}, false},
	}
	for _, tt := range tests {
		got, ok := ParsePodLogDirName(tt.name)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("ParsePodLogDirName(%q) = %+v, %v; want %+v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParsePodLogDirName(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		pod, ok := ParsePodLogDirName(name)
		if !ok {
			if pod != (Pod{}) {
				t.Errorf("rejected %q but returned %+v", name, pod)
			}
			return
		}
		if back := pod.Namespace + "_" + pod.Name + "_" + pod.UID; back != name {
			t.Errorf("%q parsed as %+v, which formats back as %q", name, pod, back)
		}
		if !canonicalUID.MatchString(pod.UID) {
			t.Errorf("UID %q is not canonical", pod.UID)
		}
		if pod.Namespace == "" || len(pod.Namespace) > 63 || strings.Trim(pod.Namespace, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Errorf("namespace %q is not a DNS label", pod.Namespace)
		}
		if pod.Name == "" || len(pod.Name) > 253 || strings.Trim(pod.Name, "abcdefghijklmnopqrstuvwxyz0123456789-.") != "" {
			t.Errorf("name %q is not a DNS subdomain", pod.Name)
		}
	})
}

// podDirFixture is a pod log directory and a PodDirectory reading it on a
// clock the test moves.
type podDirFixture struct {
	t   *testing.T
	dir string
	d   *PodDirectory
	now time.Time
}

func newPodDirFixture(t *testing.T, names ...string) *podDirFixture {
	f := &podDirFixture{t: t, dir: t.TempDir()}
	for _, n := range names {
		f.add(n)
	}
	d, err := NewPodDirectory(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	f.d, f.now = d, d.lastRead
	d.now = func() time.Time { return f.now }
	return f
}

func (f *podDirFixture) add(name string) {
	if err := os.Mkdir(filepath.Join(f.dir, name), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func (f *podDirFixture) remove(name string) {
	if err := os.RemoveAll(filepath.Join(f.dir, name)); err != nil {
		f.t.Fatal(err)
	}
}

// reread moves the clock past the re-read interval and makes a miss
// re-read the directory.
func (f *podDirFixture) reread() {
	f.now = f.now.Add(f.d.interval)
	if _, ok := f.d.Lookup("00000000-0000-0000-0000-000000000000"); ok {
		f.t.Fatal("the zero UID resolved")
	}
}

func (f *podDirFixture) wantPod(uid string, want Pod) {
	f.t.Helper()
	if got, ok := f.d.Lookup(uid); !ok || got != want {
		f.t.Errorf("Lookup(%s) = %+v, %v; want %+v", uid, got, ok, want)
	}
}

func (f *podDirFixture) wantNoPod(uid string) {
	f.t.Helper()
	if got, ok := f.d.Lookup(uid); ok {
		f.t.Errorf("Lookup(%s) = %+v; want no pod", uid, got)
	}
}

var (
	coredns = Pod{"kube-system", "coredns-5d78c9869d-x7k2p", uid}
	web     = Pod{"default", "web-0", uid2}
	etcd    = Pod{"kube-system", "etcd-cp1", static}
)

func dirName(p Pod) string { return p.Namespace + "_" + p.Name + "_" + p.UID }

func TestNewPodDirectoryErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewPodDirectory(filepath.Join(dir, "missing")); err == nil {
		t.Error("NewPodDirectory on a missing directory: no error")
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewPodDirectory(file); err == nil {
		t.Error("NewPodDirectory on a file: no error")
	}
}

func TestPodDirectoryLookup(t *testing.T) {
	f := newPodDirFixture(t, dirName(coredns), dirName(etcd),
		"lost+found", "kube-system_broken_", "default_web-0_"+uid2SD, ".tmp_"+dirName(web))
	// A file with a pod's name is not a pod's directory.
	if err := os.WriteFile(filepath.Join(f.dir, dirName(web)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.reread()

	f.wantPod(uid, coredns)
	f.wantPod(static, etcd)
	f.wantNoPod(uid2)
	f.wantNoPod("")
	f.wantNoPod("not-a-uid")
	if n := len(f.d.pods); n != 2 {
		t.Errorf("%d pods known, want 2: junk entries were taken for pods", n)
	}
}

func TestPodDirectoryNewPod(t *testing.T) {
	f := newPodDirFixture(t, dirName(coredns))
	f.add(dirName(web))

	// Read less than an interval ago: a miss does not touch the disk.
	f.now = f.now.Add(f.d.interval / 2)
	f.wantNoPod(uid2)

	f.now = f.now.Add(f.d.interval / 2)
	f.wantPod(uid2, web)
	f.wantPod(uid, coredns)
}

func TestPodDirectoryRemovedPod(t *testing.T) {
	f := newPodDirFixture(t, dirName(coredns), dirName(web))
	f.remove(dirName(web))
	f.reread()
	f.wantPod(uid2, web)

	f.now = f.now.Add(f.d.retention - f.d.interval)
	f.reread() // exactly the retention after it vanished
	f.wantPod(uid2, web)

	f.now = f.now.Add(time.Nanosecond)
	f.reread()
	f.wantNoPod(uid2)
	f.wantPod(uid, coredns)
}

func TestPodDirectoryPodComesBack(t *testing.T) {
	f := newPodDirFixture(t, dirName(web))
	f.remove(dirName(web))
	f.reread()
	f.add(dirName(web))
	f.reread()
	if got := f.d.Find(web.Namespace, web.Name); !reflect.DeepEqual(got, []Pod{web}) {
		t.Errorf("Find after the pod came back = %+v", got)
	}
	// Back on disk, it is no longer counted as vanished: when it vanishes
	// again, long after, it is remembered for the full retention.
	f.now = f.now.Add(2 * f.d.retention)
	f.reread()
	f.remove(dirName(web))
	f.reread()
	f.wantPod(uid2, web)
}

func TestPodDirectoryVanishedBound(t *testing.T) {
	pods := []Pod{coredns, web, etcd}
	f := newPodDirFixture(t, dirName(coredns), dirName(web), dirName(etcd))
	f.d.limit = 2
	for _, p := range pods { // vanish one at a time, oldest first
		f.remove(dirName(p))
		f.reread()
	}
	f.wantNoPod(coredns.UID)
	f.wantPod(web.UID, web)
	f.wantPod(etcd.UID, etcd)
	if n := len(f.d.pods); n != 2 {
		t.Errorf("%d pods known, want 2", n)
	}
}

func TestPodDirectoryFind(t *testing.T) {
	other := Pod{"staging", "web-0", "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"}
	gone := Pod{"prod", "web-0", "4f5a6b7c-8d9e-4fa0-b1c2-d3e4f5a6b7c8"}
	f := newPodDirFixture(t, dirName(coredns), dirName(web), dirName(gone))
	f.remove(dirName(gone))
	f.add(dirName(other))
	f.now = f.now.Add(f.d.interval) // Find re-reads itself

	tests := []struct {
		ns, name string
		want     []Pod
	}{
		{"", "web-0", []Pod{web, other}},
		{"staging", "web-0", []Pod{other}},
		{"default", "web-0", []Pod{web}},
		{"kube-system", "web-0", nil},
		{"prod", "web-0", nil}, // vanished: still named by Lookup, but not found
		{"", "coredns-5d78c9869d-x7k2p", []Pod{coredns}},
		{"", "web", nil},
	}
	for _, tt := range tests {
		if got := f.d.Find(tt.ns, tt.name); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Find(%q, %q) = %+v, want %+v", tt.ns, tt.name, got, tt.want)
		}
	}
	f.wantPod(gone.UID, gone)
}

func TestPodDirectoryNil(t *testing.T) {
	var d *PodDirectory
	if _, ok := d.Lookup(uid); ok {
		t.Error("nil PodDirectory found a pod")
	}
	if got := d.Find("", "web-0"); got != nil {
		t.Errorf("nil PodDirectory found %+v", got)
	}
}

func TestPodDirectoryConcurrent(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, dirName(coredns)), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := NewPodDirectory(dir)
	if err != nil {
		t.Fatal(err)
	}
	d.interval = 0 // every miss re-reads, on the real clock
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				if p, ok := d.Lookup(uid); !ok || p != coredns {
					t.Errorf("Lookup(%s) = %+v, %v", uid, p, ok)
					return
				}
				if i%2 == 0 {
					d.Lookup(uid2)
				} else if j%50 == 0 {
					d.Find("", web.Name)
				}
			}
		})
	}
	if err := os.Mkdir(filepath.Join(dir, dirName(web)), 0o755); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if p, ok := d.Lookup(uid2); !ok || p != web {
		t.Errorf("Lookup(%s) = %+v, %v after it was created", uid2, p, ok)
	}
}
