// Package kube names the Kubernetes pod, container or system unit behind a
// cgroup path, and a pod's namespace and name from kubelet's pod log
// directories, without the API server. Nothing here forks, execs or starts
// goroutines: it runs on nodes that may be out of PIDs.
package kube

import "strings"

// CgroupInfo is what a cgroup path says about the task that lives in it.
type CgroupInfo struct {
	PodUID      string // canonical lowercase UID with dashes (systemd driver writes underscores; convert), "" if not a pod
	ContainerID string // the container's ID (usually 64 hex chars) as the runtime names it, "" when the path stops at the pod (e.g. the pod cgroup itself, or a pause/sandbox-less path)
	Runtime     string // "containerd", "cri-o", "docker", or "" when the path does not say (cgroupfs driver paths often don't)
	QoS         string // "guaranteed", "burstable", "besteffort" for pods; "" otherwise
	PodCgroup   string // the path of the pod-level cgroup (prefix of the input ending at the pod component), "" if not a pod
	Owner       string // for non-pod cgroups: the most specific systemd unit (last component ending in .service/.scope/.slice, e.g. "kubelet.service", "containerd.service", "session-3.scope", "system.slice"), else the last path component, "/" for the root. For pods: "".
}

// kubelet puts every pod in a cgroup of its own under a QoS class cgroup:
//
//	kubepods/                   guaranteed pods
//	kubepods/burstable/         burstable pods
//	kubepods/besteffort/        best-effort pods
//
// Guaranteed pods have no QoS cgroup of their own: their requests equal
// their limits, so kubelet never needs to adjust a class-wide limit for
// them and they sit directly under kubepods. The container runtime then
// makes one cgroup per container inside the pod's.
//
// With the cgroupfs driver those names are directories: kubepods/burstable/
// pod<uid>/<container id>. With the systemd driver (on cgroup v1 or v2)
// each is a systemd slice, and systemd encodes a slice's ancestry in its
// name with dashes: a-b.slice lives in a.slice. So kubelet turns the path
// kubepods/burstable/pod<uid> into kubepods.slice/kubepods-burstable.slice/
// kubepods-burstable-pod<uid>.slice, and must first replace the dashes
// inside each name with underscores, or systemd would read the UID's
// dashes as more levels: pod1c7b6a4e_2f3d_... in the slice name is pod
// UID 1c7b6a4e-2f3d-.... The runtime then runs each container in a
// transient scope unit named after it, <prefix>-<id>.scope. kubelet's
// --cgroup-root moves the whole tree (kind uses /kubelet, which gives
// kubelet.slice/kubelet-kubepods.slice/...), and a node that is itself a
// container (kind, docker-in-docker) sees it under its own cgroup.

// containerPrefixes are the cgroup name prefixes container runtimes give a
// container's cgroup, longest first where one is a prefix of another.
var containerPrefixes = []struct{ prefix, runtime string }{
	{"cri-containerd-", "containerd"},
	// CRI-O does not supervise containers itself: each container has a
	// conmon process that holds its stdio and waits for its exit status.
	// conmon must outlive the container's processes, so it runs in a
	// cgroup of its own, crio-conmon-<id>, in the pod's cgroup (CRI-O's
	// conmon_cgroup = "pod") or in system.slice. The ID is that of the
	// container it monitors.
	{"crio-conmon-", "cri-o"},
	{"crio-", "cri-o"},
	{"docker-", "docker"},
}

// shortIDLen is how much of a container ID docker ps and crictl ps show.
const shortIDLen = 12

// ParseCgroupPath parses a cgroup path relative to the hierarchy root. It never fails: unknown shapes give a CgroupInfo with only Owner set.
//
// The innermost pod wins: for a kind node's pods, /docker/<node id>/kubepods/
// burstable/pod<uid>/<id> gives that pod, not the node's container. A
// container's cgroup outside any pod (a plain docker container, or a CRI-O
// conmon placed in system.slice) gives ContainerID and Runtime, and an
// Owner of the runtime's prefix and the container's short ID, e.g.
// "docker-0a1b2c3d4e5f": short like the IDs docker ps shows, and not
// dressed up as a unit name that systemctl would not find.
func ParseCgroupPath(path string) CgroupInfo {
	var buf [16]component // deep enough for nested nodes; no allocation
	comps := splitPath(path, buf[:0])
	if len(comps) == 0 {
		return CgroupInfo{Owner: "/"}
	}
	for i := len(comps) - 1; i >= 0; i-- {
		uid, qos, ok := podComponent(comps, i)
		if !ok {
			continue
		}
		info := CgroupInfo{PodUID: uid, QoS: qos, PodCgroup: path[:comps[i].end]}
		if i+1 < len(comps) {
			// Anything below the container's cgroup (crun's
			// <id>.scope/container, threaded sub-cgroups) is still
			// that container.
			info.ContainerID, info.Runtime, _ = containerComponent(comps[i+1].name)
		}
		return info
	}

	// The owner is the most specific systemd unit, else the last name.
	o := len(comps) - 1
	for i := o; i >= 0; i-- {
		if n := comps[i].name; strings.HasSuffix(n, ".service") || strings.HasSuffix(n, ".scope") || strings.HasSuffix(n, ".slice") {
			o = i
			break
		}
	}
	owner := comps[o].name
	if id, runtime, prefix := containerComponent(owner); id != "" {
		// cgroupfs docker puts a plain container in /docker/<id>.
		if prefix == "" && o > 0 && comps[o-1].name == "docker" {
			runtime, prefix = "docker", "docker-"
		}
		return CgroupInfo{ContainerID: id, Runtime: runtime, Owner: prefix + id[:shortIDLen]}
	}
	return CgroupInfo{Owner: owner}
}

// QoSClass returns the QoS class ("burstable" or "besteffort") whose cgroup
// path is — kubepods/burstable, or kubepods.slice/kubepods-burstable.slice
// with the systemd driver — or "" when path is not a QoS class's cgroup.
// Guaranteed pods have none: they sit in kubepods itself.
func QoSClass(path string) string {
	var buf [16]component
	comps := splitPath(path, buf[:0])
	n := len(comps)
	if n < 2 {
		return ""
	}
	name, parent := comps[n-1].name, comps[n-2].name
	for _, class := range []string{"burstable", "besteffort"} {
		if name == class && parent == "kubepods" {
			return class
		}
		prefix, ok := strings.CutSuffix(parent, ".slice")
		if ok && (prefix == "kubepods" || strings.HasSuffix(prefix, "-kubepods")) && name == prefix+"-"+class+".slice" {
			return class
		}
	}
	return ""
}

// component is one name in a cgroup path, and where it ends in the path.
type component struct {
	name string
	end  int
}

// splitPath appends a cgroup path's non-empty names to comps.
func splitPath(path string, comps []component) []component {
	for start := 0; start < len(path); {
		end := strings.IndexByte(path[start:], '/')
		if end < 0 {
			end = len(path)
		} else {
			end += start
		}
		if end > start {
			comps = append(comps, component{path[start:end], end})
		}
		start = end + 1
	}
	return comps
}

// podComponent reports whether comps[i] is a pod's cgroup, checking that
// its parents are the QoS and kubepods cgroups kubelet puts it in, so that
// a cgroup merely named pod<something> is not taken for one.
func podComponent(comps []component, i int) (uid, qos string, ok bool) {
	if i == 0 {
		return "", "", false
	}
	name, parent := comps[i].name, comps[i-1].name

	// cgroupfs: kubepods[/burstable|/besteffort]/pod<uid>
	if rest, found := strings.CutPrefix(name, "pod"); found {
		if !validUID(rest) {
			return "", "", false
		}
		switch {
		case parent == "kubepods":
			return rest, "guaranteed", true
		case (parent == "burstable" || parent == "besteffort") && i >= 2 && comps[i-2].name == "kubepods":
			return rest, parent, true
		}
		return "", "", false
	}

	// systemd: <prefix>.slice/<prefix>-pod<uid_with_underscores>.slice,
	// where <prefix> is [<root>-]kubepods[-burstable|-besteffort].
	base, found := strings.CutSuffix(name, ".slice")
	if !found {
		return "", "", false
	}
	j := strings.LastIndex(base, "-pod")
	if j < 0 {
		return "", "", false
	}
	prefix, escaped := base[:j], base[j+len("-pod"):]
	if parent != prefix+".slice" || strings.IndexByte(escaped, '-') >= 0 {
		return "", "", false
	}
	uid = strings.ReplaceAll(escaped, "_", "-")
	if !validUID(uid) {
		return "", "", false
	}
	qos = "guaranteed"
	for _, class := range []string{"burstable", "besteffort"} {
		if p, ok := strings.CutSuffix(prefix, "-"+class); ok {
			prefix, qos = p, class
			break
		}
	}
	if prefix != "kubepods" && !strings.HasSuffix(prefix, "-kubepods") {
		return "", "", false
	}
	return uid, qos, true
}

// containerComponent parses a container's cgroup name: a bare ID
// (cgroupfs), or a runtime prefix, the ID, and ".scope" under systemd
// (some setups leave the prefix on cgroupfs too, with or without .scope).
// It returns the ID, the runtime and the prefix the name had, or id ""
// when name is not a container's.
func containerComponent(name string) (id, runtime, prefix string) {
	name = strings.TrimSuffix(name, ".scope")
	for _, p := range containerPrefixes {
		if rest, ok := strings.CutPrefix(name, p.prefix); ok {
			if !validContainerID(rest) {
				return "", "", ""
			}
			return rest, p.runtime, p.prefix
		}
	}
	if validContainerID(name) {
		return name, "", ""
	}
	return "", "", ""
}

// validContainerID reports whether s is a container ID as docker,
// containerd's CRI plugin and CRI-O make them: 64 lowercase hex digits.
func validContainerID(s string) bool {
	return len(s) == 64 && isLowerHex(s)
}

// validUID reports whether s is a pod UID as kubelet spells it in cgroup
// and log directory names: a lowercase UUID (8-4-4-4-12 hex digits), as
// the API server assigns, or 32 lowercase hex digits, the MD5 of the
// manifest kubelet gives a static pod (kube-apiserver, etcd, ... on
// kubeadm control planes) that does not set its own UID.
func validUID(s string) bool {
	switch len(s) {
	case 32:
		return isLowerHex(s)
	case 36:
		for i := 0; i < len(s); i++ {
			c := s[i]
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if c != '-' {
					return false
				}
			} else if !isLowerHexByte(c) {
				return false
			}
		}
		return true
	}
	return false
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isLowerHexByte(s[i]) {
			return false
		}
	}
	return true
}

func isLowerHexByte(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
}
