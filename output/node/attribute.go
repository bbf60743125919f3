package node

import (
	"time"

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
	resolved time.Time // when Who was looked up (see Attributor.Failure)
}

// TaskEvent is a task created or exited, with whose it was.
type TaskEvent struct {
	tracer.TaskEvent
	Who
	resolved time.Time
}

// Failure sets dst to the failed fork f and who made it. dst is the
// caller's, reused from record to record: the reader allocates nothing per
// failure.
//
// A storm repeats one cgroup record after record: the previous record's
// Who is kept for the same path for up to reresolve, so that a pod named
// later (its log directory appeared) is named in the storm within that.
func (a *Attributor) Failure(dst *Failure, f *tracer.Failure) {
	if f.Cgroup != dst.Cgroup || f.Time.Sub(dst.resolved) > reresolve || f.Time.Before(dst.resolved) {
		dst.Who, dst.resolved = a.Resolve(f.Cgroup), f.Time
	}
	dst.Failure = *f
}

// reresolve bounds how long a record's Who is reused for the next record
// from the same cgroup.
const reresolve = time.Second

// Task sets dst to the created or exited task t and whose it was.
func (a *Attributor) Task(dst *TaskEvent, t *tracer.TaskEvent) {
	if t.Cgroup != dst.Cgroup || t.Time.Sub(dst.resolved) > reresolve || t.Time.Before(dst.resolved) {
		dst.Who, dst.resolved = a.Resolve(t.Cgroup), t.Time
	}
	dst.TaskEvent = *t
}
