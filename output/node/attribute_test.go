package node

import (
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/tracer"
)

// The reader reuses one Failure; its Who follows the cgroup of each record,
// never the previous record's.
func TestAttributorFollowsEachRecordsCgroup(t *testing.T) {
	a := &Attributor{}
	at := time.Date(2026, 3, 4, 14, 2, 11, 0, time.UTC)
	paths := []string{
		"/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/cri-containerd-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
		"/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/cri-containerd-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
		"/system.slice/kubelet.service",
		"/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555",
		"/system.slice/kubelet.service",
	}
	var f Failure
	for i, p := range paths {
		a.Failure(&f, &tracer.Failure{Time: at.Add(time.Duration(i) * time.Millisecond), Cgroup: p})
		want := a.Resolve(p)
		if f.ContainerID != want.ContainerID || f.Owner != want.Owner || (f.Pod == nil) != (want.Pod == nil) || (f.Pod != nil && *f.Pod != *want.Pod) {
			t.Errorf("record %d (%s): who = %+v, want %+v", i, p, f.Who, want)
		}
	}
	var ev TaskEvent
	for i, p := range paths {
		a.Task(&ev, &tracer.TaskEvent{Time: at.Add(time.Duration(i) * time.Millisecond), Cgroup: p})
		if want := a.Resolve(p); ev.Owner != want.Owner || ev.ContainerID != want.ContainerID {
			t.Errorf("task %d (%s): who = %+v, want %+v", i, p, ev.Who, want)
		}
	}
}
