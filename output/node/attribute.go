package node

import (
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/tracer"
)

// Attributor names the pod, container or system unit behind a cgroup path,
// without the API server: the path gives the pod UID and container ID, and
// kubelet's pod log directories give the pod's namespace and name.
type Attributor struct {
	Pods *kube.PodDirectory // nil: pods are named by UID only
}

// Who is what a cgroup path says about the tasks in it.
type Who struct {
	Pod         *kube.Pod `json:"pod,omitempty"` // nil outside pods
	ContainerID string    `json:"container_id,omitempty"`
	// Owner names a task outside any pod by its cgroup, e.g. kubelet.service.
	Owner string `json:"owner,omitempty"`
}

// Resolve names the owner of a cgroup path. The paths come from the kernel
// with each record, so this works after the cgroup is gone.
func (a *Attributor) Resolve(cgroup string) Who {
	info := kube.ParseCgroupPath(cgroup)
	w := Who{ContainerID: info.ContainerID, Owner: info.Owner}
	if info.PodUID == "" {
		return w
	}
	pod := kube.Pod{UID: info.PodUID}
	if a.Pods != nil {
		if p, ok := a.Pods.Lookup(info.PodUID); ok {
			pod = p
		}
	}
	w.Pod = &pod
	return w
}

// Failure is a failed fork as the kernel reported it, with who made it. Its
// JSON form is the documented fork_failed object.
type Failure struct {
	tracer.Failure
	Who
}

// TaskEvent is a task created or exited, with whose it was.
type TaskEvent struct {
	tracer.TaskEvent
	Who
}

// Failure sets dst to the failed fork f and who made it. dst is the
// caller's, reused from record to record: the reader allocates nothing per
// failure.
func (a *Attributor) Failure(dst *Failure, f *tracer.Failure) {
	dst.Failure = *f
	dst.Who = a.Resolve(f.Cgroup)
}

// Task sets dst to the created or exited task t and whose it was.
func (a *Attributor) Task(dst *TaskEvent, t *tracer.TaskEvent) {
	dst.TaskEvent = *t
	dst.Who = a.Resolve(t.Cgroup)
}
