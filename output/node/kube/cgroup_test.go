package kube

import (
	"regexp"
	"strings"
	"testing"
)

const (
	uid     = "1c7b6a4e-2f3d-4c5b-9a8e-7d6c5b4a3f21"
	uidSD   = "1c7b6a4e_2f3d_4c5b_9a8e_7d6c5b4a3f21" // as the systemd driver writes it
	uid2    = "9f0e8d7c-6b5a-4f3e-8d2c-1b0a9f8e7d6c"
	uid2SD  = "9f0e8d7c_6b5a_4f3e_8d2c_1b0a9f8e7d6c"
	static  = "a226e9fbdfc1c8dd7e7fef4d333f86ed" // a static pod's UID: an MD5
	ctr     = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
	ctrNode = "545ea538461003efdc8c81c244531b003f6f26cfccf6c0073b3239fdedf49446" // a kind node's container
)

func TestParseCgroupPath(t *testing.T) {
	pod := func(podCgroup, qos, id, runtime string) CgroupInfo {
		return CgroupInfo{PodUID: uid, ContainerID: id, Runtime: runtime, QoS: qos, PodCgroup: podCgroup}
	}
	tests := []struct {
		name, path string
		want       CgroupInfo
	}{
		// cgroupfs driver, same relative paths on v1 and v2.
		{"cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + ctr,
			pod("/kubepods/pod"+uid, "guaranteed", ctr, "")},
		{"cgroupfs burstable", "/kubepods/burstable/pod" + uid + "/" + ctr,
			pod("/kubepods/burstable/pod"+uid, "burstable", ctr, "")},
		{"cgroupfs besteffort", "/kubepods/besteffort/pod" + uid + "/" + ctr,
			pod("/kubepods/besteffort/pod"+uid, "besteffort", ctr, "")},
		{"cgroupfs pod cgroup", "/kubepods/burstable/pod" + uid,
			pod("/kubepods/burstable/pod"+uid, "burstable", "", "")},
		{"cgroupfs guaranteed pod cgroup", "/kubepods/pod" + uid,
			pod("/kubepods/pod"+uid, "guaranteed", "", "")},
		{"cgroupfs pod cgroup trailing slash", "/kubepods/besteffort/pod" + uid + "/",
			pod("/kubepods/besteffort/pod"+uid, "besteffort", "", "")},
		{"cgroupfs crio prefix", "/kubepods/burstable/pod" + uid + "/crio-" + ctr,
			pod("/kubepods/burstable/pod"+uid, "burstable", ctr, "cri-o")},
		{"cgroupfs crio conmon", "/kubepods/burstable/pod" + uid + "/crio-conmon-" + ctr,
			pod("/kubepods/burstable/pod"+uid, "burstable", ctr, "cri-o")},
		{"cgroupfs docker prefix", "/kubepods/besteffort/pod" + uid + "/docker-" + ctr,
			pod("/kubepods/besteffort/pod"+uid, "besteffort", ctr, "docker")},
		{"cgroupfs containerd scope", "/kubepods/pod" + uid + "/cri-containerd-" + ctr + ".scope",
			pod("/kubepods/pod"+uid, "guaranteed", ctr, "containerd")},
		{"cgroupfs relative path", "kubepods/burstable/pod" + uid + "/" + ctr,
			pod("kubepods/burstable/pod"+uid, "burstable", ctr, "")},
		{"cgroupfs custom cgroup root", "/k8s/kubepods/burstable/pod" + uid + "/" + ctr,
			pod("/k8s/kubepods/burstable/pod"+uid, "burstable", ctr, "")},
		{"cgroupfs static pod", "/kubepods/burstable/pod" + static + "/" + ctr,
			CgroupInfo{PodUID: static, ContainerID: ctr, QoS: "burstable", PodCgroup: "/kubepods/burstable/pod" + static}},

		// systemd driver, v1 or v2.
		{"systemd guaranteed containerd",
			"/kubepods.slice/kubepods-pod" + uidSD + ".slice/cri-containerd-" + ctr + ".scope",
			pod("/kubepods.slice/kubepods-pod"+uidSD+".slice", "guaranteed", ctr, "containerd")},
		{"systemd burstable crio",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/crio-" + ctr + ".scope",
			pod("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidSD+".slice", "burstable", ctr, "cri-o")},
		{"systemd burstable crio conmon",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/crio-conmon-" + ctr + ".scope",
			pod("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidSD+".slice", "burstable", ctr, "cri-o")},
		{"systemd crio crun subgroup",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/crio-" + ctr + ".scope/container",
			pod("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidSD+".slice", "burstable", ctr, "cri-o")},
		{"systemd besteffort docker",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSD + ".slice/docker-" + ctr + ".scope",
			pod("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+uidSD+".slice", "besteffort", ctr, "docker")},
		{"systemd burstable containerd",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/cri-containerd-" + ctr + ".scope",
			pod("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+uidSD+".slice", "burstable", ctr, "containerd")},
		{"systemd pod slice",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSD + ".slice",
			pod("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+uidSD+".slice", "besteffort", "", "")},
		{"systemd static pod",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + ctr + ".scope",
			CgroupInfo{PodUID: static, ContainerID: ctr, Runtime: "containerd", QoS: "burstable",
				PodCgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice"}},
		{"systemd cgroup root /kubelet (kind)",
			"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidSD + ".slice/cri-containerd-" + ctr + ".scope",
			pod("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod"+uidSD+".slice", "besteffort", ctr, "containerd")},
		{"systemd cgroup root /kubelet guaranteed",
			"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + uidSD + ".slice",
			pod("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod"+uidSD+".slice", "guaranteed", "", "")},

		// Nodes that are containers: the innermost pod counts.
		{"kind on cgroupfs docker", "/docker/" + ctrNode + "/kubepods/burstable/pod" + uid + "/" + ctr,
			pod("/docker/"+ctrNode+"/kubepods/burstable/pod"+uid, "burstable", ctr, "")},
		{"kind on systemd docker", "/system.slice/docker-" + ctrNode + ".scope/kubepods/besteffort/pod" + uid + "/" + ctr,
			pod("/system.slice/docker-"+ctrNode+".scope/kubepods/besteffort/pod"+uid, "besteffort", ctr, "")},
		{"kind systemd in systemd",
			"/system.slice/docker-" + ctrNode + ".scope/kubepods.slice/kubepods-pod" + uidSD + ".slice/cri-containerd-" + ctr + ".scope",
			pod("/system.slice/docker-"+ctrNode+".scope/kubepods.slice/kubepods-pod"+uidSD+".slice", "guaranteed", ctr, "containerd")},
		{"pod in a pod", "/kubepods/burstable/pod" + uid2 + "/" + ctrNode + "/kubepods/besteffort/pod" + uid + "/" + ctr,
			pod("/kubepods/burstable/pod"+uid2+"/"+ctrNode+"/kubepods/besteffort/pod"+uid, "besteffort", ctr, "")},

		// Not pods.
		{"root", "/", CgroupInfo{Owner: "/"}},
		{"empty", "", CgroupInfo{Owner: "/"}},
		{"double slash root", "//", CgroupInfo{Owner: "/"}},
		{"kubepods", "/kubepods", CgroupInfo{Owner: "kubepods"}},
		{"kubepods burstable", "/kubepods/burstable", CgroupInfo{Owner: "burstable"}},
		{"kubepods slice", "/kubepods.slice", CgroupInfo{Owner: "kubepods.slice"}},
		{"kubepods burstable slice", "/kubepods.slice/kubepods-burstable.slice", CgroupInfo{Owner: "kubepods-burstable.slice"}},
		{"kubelet", "/system.slice/kubelet.service", CgroupInfo{Owner: "kubelet.service"}},
		{"containerd", "/system.slice/containerd.service", CgroupInfo{Owner: "containerd.service"}},
		{"session", "/user.slice/user-0.slice/session-3.scope", CgroupInfo{Owner: "session-3.scope"}},
		{"system slice", "/system.slice", CgroupInfo{Owner: "system.slice"}},
		{"init scope", "/init.scope", CgroupInfo{Owner: "init.scope"}},
		{"unit with sub-cgroup", "/system.slice/containerd.service/worker", CgroupInfo{Owner: "containerd.service"}},
		{"no unit", "/machine/qemu-1", CgroupInfo{Owner: "qemu-1"}},
		{"kind node's kubelet", "/docker/" + ctrNode + "/system.slice/kubelet.service", CgroupInfo{Owner: "kubelet.service"}},

		// Containers outside pods.
		{"plain docker on systemd", "/system.slice/docker-" + ctr + ".scope",
			CgroupInfo{ContainerID: ctr, Runtime: "docker", Owner: "docker-" + ctr[:12]}},
		{"plain docker on cgroupfs", "/docker/" + ctr,
			CgroupInfo{ContainerID: ctr, Runtime: "docker", Owner: "docker-" + ctr[:12]}},
		{"crio conmon in system.slice", "/system.slice/crio-conmon-" + ctr + ".scope",
			CgroupInfo{ContainerID: ctr, Runtime: "cri-o", Owner: "crio-conmon-" + ctr[:12]}},
		{"bare container id", "/somewhere/" + ctr,
			CgroupInfo{ContainerID: ctr, Owner: ctr[:12]}},
		{"below a plain docker container", "/system.slice/docker-" + ctr + ".scope/init",
			CgroupInfo{ContainerID: ctr, Runtime: "docker", Owner: "docker-" + ctr[:12]}},
		{"unit wins over a bare id below it", "/docker/" + ctrNode + "/system.slice/kubelet.service/" + ctr,
			CgroupInfo{Owner: "kubelet.service"}},

		// Lookalikes.
		{"pod without uid", "/kubepods/burstable/podcast", CgroupInfo{Owner: "podcast"}},
		{"uppercase uid", "/kubepods/burstable/pod" + strings.ToUpper(uid), CgroupInfo{Owner: "pod" + strings.ToUpper(uid)}},
		{"uid with suffix", "/kubepods/burstable/pod" + uid + "x", CgroupInfo{Owner: "pod" + uid + "x"}},
		{"uid too short", "/kubepods/burstable/pod" + uid[:35], CgroupInfo{Owner: "pod" + uid[:35]}},
		{"uid dash misplaced", "/kubepods/pod1c7b6a4e2-f3d-4c5b-9a8e-7d6c5b4a3f21", CgroupInfo{Owner: "pod1c7b6a4e2-f3d-4c5b-9a8e-7d6c5b4a3f21"}},
		{"underscores on cgroupfs", "/kubepods/pod" + uidSD, CgroupInfo{Owner: "pod" + uidSD}},
		{"not under kubepods", "/user.slice/pod" + uid, CgroupInfo{Owner: "user.slice"}},
		{"unknown qos", "/kubepods/guaranteed/pod" + uid, CgroupInfo{Owner: "pod" + uid}},
		{"qos not under kubepods", "/burstable/pod" + uid, CgroupInfo{Owner: "pod" + uid}},
		{"pod at the root", "/pod" + uid, CgroupInfo{Owner: "pod" + uid}},
		{"systemd dashes in uid", "/kubepods.slice/kubepods-pod" + uid + ".slice", CgroupInfo{Owner: "kubepods-pod" + uid + ".slice"}},
		{"systemd wrong parent",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod" + uidSD + ".slice",
			CgroupInfo{Owner: "kubepods-besteffort-pod" + uidSD + ".slice"}},
		{"systemd not kubepods", "/notkubepods.slice/notkubepods-pod" + uidSD + ".slice",
			CgroupInfo{Owner: "notkubepods-pod" + uidSD + ".slice"}},
		{"systemd pod scope", "/kubepods.slice/kubepods-pod" + uidSD + ".scope",
			CgroupInfo{Owner: "kubepods-pod" + uidSD + ".scope"}},
		{"container id too short", "/kubepods/pod" + uid + "/" + ctr[:63],
			pod("/kubepods/pod"+uid, "guaranteed", "", "")},
		{"container id uppercase", "/kubepods/pod" + uid + "/docker-" + strings.ToUpper(ctr),
			pod("/kubepods/pod"+uid, "guaranteed", "", "")},
		{"unknown runtime prefix", "/kubepods/pod" + uid + "/rkt-" + ctr,
			pod("/kubepods/pod"+uid, "guaranteed", "", "")},
		{"container id with suffix", "/system.slice/docker-" + ctr + "0.scope",
			CgroupInfo{Owner: "docker-" + ctr + "0.scope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseCgroupPath(tt.path); got != tt.want {
				t.Errorf("ParseCgroupPath(%q)\n got  %+v\n want %+v", tt.path, got, tt.want)
			}
		})
	}
}

func TestParseCgroupPathAllocs(t *testing.T) {
	// Called per failure event: the results are substrings of the path,
	// except the UID the systemd driver spelled with underscores.
	for path, want := range map[string]float64{
		"/kubepods/burstable/pod" + uid + "/" + ctr: 0,
		"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/cri-containerd-" + ctr + ".scope": 1,
		"/system.slice/kubelet.service": 0,
	} {
		if n := testing.AllocsPerRun(100, func() { ParseCgroupPath(path) }); n > want {
			t.Errorf("ParseCgroupPath(%q) allocates %v times per call, want at most %v", path, n, want)
		}
	}
}

var (
	canonicalUID = regexp.MustCompile(`^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$`)
	hexID        = regexp.MustCompile(`^[0-9a-f]+$`)
)

func FuzzParseCgroupPath(f *testing.F) {
	f.Fuzz(func(t *testing.T, path string) {
		got := ParseCgroupPath(path)
		isPod := got.PodUID != ""
		if isPod {
			if !canonicalUID.MatchString(got.PodUID) {
				t.Errorf("PodUID %q is not canonical", got.PodUID)
			}
			if !strings.HasPrefix(path, got.PodCgroup) || got.PodCgroup == "" {
				t.Errorf("PodCgroup %q is not a prefix of %q", got.PodCgroup, path)
			}
			last := got.PodCgroup[strings.LastIndexByte(got.PodCgroup, '/')+1:]
			if !strings.Contains(last, got.PodUID) && !strings.Contains(last, strings.ReplaceAll(got.PodUID, "-", "_")) {
				t.Errorf("PodCgroup %q does not end at the pod's component (UID %s)", got.PodCgroup, got.PodUID)
			}
			if got.QoS != "guaranteed" && got.QoS != "burstable" && got.QoS != "besteffort" {
				t.Errorf("pod QoS %q", got.QoS)
			}
			if got.Owner != "" {
				t.Errorf("pod has Owner %q", got.Owner)
			}
		} else {
			if got.PodCgroup != "" || got.QoS != "" {
				t.Errorf("not a pod, yet PodCgroup %q QoS %q", got.PodCgroup, got.QoS)
			}
			if got.Owner == "" {
				t.Errorf("not a pod and no Owner")
			}
		}
		if got.ContainerID != "" {
			if !hexID.MatchString(got.ContainerID) {
				t.Errorf("ContainerID %q is not hex", got.ContainerID)
			}
			if !strings.Contains(path, got.ContainerID) {
				t.Errorf("ContainerID %q is not in the path", got.ContainerID)
			}
			if isPod && !strings.Contains(path[len(got.PodCgroup):], got.ContainerID) {
				t.Errorf("ContainerID %q is not below the pod cgroup", got.ContainerID)
			}
		}
		switch got.Runtime {
		case "", "containerd", "cri-o", "docker":
		default:
			t.Errorf("Runtime %q", got.Runtime)
		}
		if got.Runtime != "" && got.ContainerID == "" {
			t.Errorf("Runtime %q without a container", got.Runtime)
		}
	})
}

func TestQoSClass(t *testing.T) {
	for path, want := range map[string]string{
		"/kubepods/burstable":                      "burstable",
		"/kubepods/besteffort":                     "besteffort",
		"/kubepods.slice/kubepods-burstable.slice": "burstable",
		"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice": "besteffort",
		"/kubepods":        "",
		"/burstable":       "",
		"/other/burstable": "",
		"/kubepods.slice/kubepods-guaranteed.slice": "",
		"/kubepods.slice/other-burstable.slice":     "",
	} {
		if got := QoSClass(path); got != want {
			t.Errorf("QoSClass(%q) = %q, want %q", path, got, want)
		}
	}
}
