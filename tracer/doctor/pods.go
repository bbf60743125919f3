package doctor

import (
	"os"
	"regexp"
	"strings"
)

// Pod cgroup names, as kubelet makes them:
//
//	cgroupfs driver: pod<uid>                                (uid as is)
//	systemd driver:  kubepods[-burstable|-besteffort]-pod<uid>.slice
//	                 (uid with "-" turned into "_", because "-" is the
//	                 slice hierarchy separator in systemd unit names)
//
// A UID is a UUID for API pods and a 32-digit hex hash for static pods.
var (
	cgroupfsPodRE = regexp.MustCompile(`^pod([0-9a-fA-F-]+)$`)
	systemdPodRE  = regexp.MustCompile(`^kubepods(?:-burstable|-besteffort)?-pod([0-9a-fA-F_]+)\.slice$`)
)

// podUID returns the pod UID in a pod cgroup's directory name.
func podUID(name string) (string, bool) {
	if m := cgroupfsPodRE.FindStringSubmatch(name); m != nil {
		return m[1], true
	}
	if m := systemdPodRE.FindStringSubmatch(name); m != nil {
		return strings.ReplaceAll(m[1], "_", "-"), true
	}
	return "", false
}

// qosClass returns the QoS class a cgroup directory directly below
// kubepods stands for, or "". Guaranteed pods have no QoS cgroup: they sit
// directly below kubepods.
func qosClass(name string) string {
	switch name {
	case "burstable", "kubepods-burstable.slice":
		return "burstable"
	case "besteffort", "kubepods-besteffort.slice":
		return "besteffort"
	}
	return ""
}

// ParsePodLogDir splits the name of a kubelet pod log directory,
// <namespace>_<name>_<uid>. Namespaces and pod names are DNS labels and
// subdomains, which cannot hold "_", so the first "_" ends the namespace and
// the last one starts the UID.
func ParsePodLogDir(dir string) (Pod, bool) {
	i, j := strings.IndexByte(dir, '_'), strings.LastIndexByte(dir, '_')
	if i <= 0 || j == i || j == len(dir)-1 || i+1 == j {
		return Pod{}, false
	}
	return Pod{Namespace: dir[:i], Name: dir[i+1 : j], UID: dir[j+1:]}, true
}

// podNames maps pod UIDs to pods from kubelet's pod log directory. It is
// best effort: without the directory, pods are named by UID only.
func podNames(dir string) map[string]Pod {
	out := map[string]Pod{}
	if dir == "" {
		return out
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if p, ok := ParsePodLogDir(e.Name()); ok {
			out[p.UID] = p
		}
	}
	return out
}

// podLabel is how a pod is shown: namespace/name, or its cgroup's
// directory-style pod<uid> when unnamed.
func podLabel(p *Pod) string {
	if p == nil {
		return ""
	}
	if p.Name != "" {
		return p.Namespace + "/" + p.Name
	}
	return "pod" + p.UID
}
