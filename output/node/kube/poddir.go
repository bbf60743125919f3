package kube

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Pod identifies a pod as kubelet knows it.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

// ParsePodLogDirName parses one directory name under kubelet's pod log dir: "<namespace>_<name>_<uid>". Namespaces and pod names are DNS labels/subdomains (no underscores), the UID is the last '_'-separated field; validate all three (reject garbage), return ok=false otherwise.
//
// kubelet creates that directory when it starts a pod and removes it when
// the pod is deleted. The UID is the one in the pod's cgroup name: for a
// static pod the 32-hex-digit hash kubelet gave it, not the UID of its
// mirror pod in the API server.
func ParsePodLogDirName(name string) (Pod, bool) {
	ns, rest, ok := strings.Cut(name, "_")
	if !ok {
		return Pod{}, false
	}
	pod, uid, ok := strings.Cut(rest, "_")
	if !ok || !isDNSLabel(ns) || !isDNSSubdomain(pod) || !validUID(uid) {
		return Pod{}, false
	}
	return Pod{Namespace: ns, Name: pod, UID: uid}, true
}

// isDNSLabel reports whether s is an RFC 1123 label, as namespace names
// are: at most 63 lowercase letters, digits and '-', starting and ending
// with a letter or digit.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is an RFC 1123 subdomain, as pod names
// are: at most 253 characters of '.'-separated labels.
func isDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(label) {
			return false
		}
	}
	return true
}

// How often a miss may re-read the directory, how long a pod is remembered
// after its directory disappears, and how many such pods are remembered.
// Tests change a PodDirectory's copies.
const (
	rereadInterval    = time.Second
	vanishedRetention = 10 * time.Minute
	maxVanished       = 4096
)

// PodDirectory maps pod UIDs to pods by listing kubelet's pod log directory.
//
// Pods whose directory disappears are kept for a while: a pod whose fork
// failed is often deleted right after (a crash-looping job, an evicted
// pod), and its failures should still be named. Entries once found stay
// for at least vanishedRetention after they disappear from disk, unless
// more than maxVanished pods vanished since, when the oldest vanished ones
// go first, so the map stays bounded.
type PodDirectory struct {
	dir       string
	interval  time.Duration
	retention time.Duration
	limit     int
	now       func() time.Time // time.Now; tests replace it

	mu       sync.RWMutex
	pods     map[string]*podEntry // by UID
	lastRead time.Time
}

type podEntry struct {
	pod  Pod
	gone time.Time // when a read first missed its directory; zero while it exists
}

// NewPodDirectory returns a directory reader for dir (e.g. "/var/log/pods"). It returns an error if dir does not exist or is not a directory (the CLI turns that into a one-line message). It reads dir once at construction.
func NewPodDirectory(dir string) (*PodDirectory, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	d := &PodDirectory{
		dir:       dir,
		interval:  rereadInterval,
		retention: vanishedRetention,
		limit:     maxVanished,
		now:       time.Now,
		pods:      map[string]*podEntry{},
	}
	d.mu.Lock()
	err = d.read(d.now())
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Lookup returns the pod with that UID. On a miss it re-reads the directory, at most once per second (a pod that started a moment ago appears on the next re-read; a UID that is not a pod must not make every call hit the disk). Safe for concurrent use.
func (d *PodDirectory) Lookup(uid string) (Pod, bool) {
	if d == nil || !validUID(uid) {
		return Pod{}, false // no directory would match: spare the disk
	}
	d.mu.RLock()
	e, ok := d.pods[uid]
	var pod Pod
	if ok {
		pod = e.pod
	}
	d.mu.RUnlock()
	if ok {
		return pod, true
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.maybeRead()
	if e, ok := d.pods[uid]; ok {
		return e.pod, true
	}
	return Pod{}, false
}

// Find returns the pods with that name, in namespace ns, or in every namespace when ns is "". Re-reads the directory first (rate-limited as above). Used by `forkwatch --pod NAME [-n NS]`.
//
// Only pods whose directory existed at the last read are returned, sorted
// by namespace and UID; pods remembered after they vanished are not.
func (d *PodDirectory) Find(ns, name string) []Pod {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.maybeRead()
	var pods []Pod
	for _, e := range d.pods {
		if e.gone.IsZero() && e.pod.Name == name && (ns == "" || e.pod.Namespace == ns) {
			pods = append(pods, e.pod)
		}
	}
	slices.SortFunc(pods, func(a, b Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.UID, b.UID))
	})
	return pods
}

// maybeRead re-reads the directory unless it was read less than an
// interval ago. A failed read keeps what is known. d.mu must be held.
func (d *PodDirectory) maybeRead() {
	now := d.now()
	if now.Sub(d.lastRead) < d.interval {
		return
	}
	_ = d.read(now)
}

// read lists the directory, adds new pods, marks pods whose directory
// is gone and drops those gone too long or too many. d.mu must be held.
func (d *PodDirectory) read(now time.Time) error {
	d.lastRead = now
	f, err := os.Open(d.dir)
	if err != nil {
		return err
	}
	entries, err := f.ReadDir(-1) // unsorted, unlike os.ReadDir
	f.Close()
	if err != nil {
		return err
	}

	seen := make(map[string]bool, len(entries))
	for _, de := range entries {
		if !de.IsDir() {
			continue
		}
		pod, ok := ParsePodLogDirName(de.Name())
		if !ok {
			continue
		}
		seen[pod.UID] = true
		if e, ok := d.pods[pod.UID]; ok {
			e.pod, e.gone = pod, time.Time{}
		} else {
			d.pods[pod.UID] = &podEntry{pod: pod}
		}
	}

	var vanished []*podEntry
	for uid, e := range d.pods {
		if seen[uid] {
			continue
		}
		if e.gone.IsZero() {
			e.gone = now
		}
		if now.Sub(e.gone) > d.retention {
			delete(d.pods, uid)
			continue
		}
		vanished = append(vanished, e)
	}
	if len(vanished) > d.limit {
		slices.SortFunc(vanished, func(a, b *podEntry) int { return a.gone.Compare(b.gone) })
		for _, e := range vanished[:len(vanished)-d.limit] {
			delete(d.pods, e.pod.UID)
		}
	}
	return nil
}
