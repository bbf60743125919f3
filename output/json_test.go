package output

import (
	"bytes"
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/tracer"
)

// The JSON Lines objects are a contract (README "JSON output"): field names,
// their order (the kernel's record, then who made the call) and the shape of
// "limit" per cause.
func TestJSONFailureSchema(t *testing.T) {
	var out bytes.Buffer
	w := NewJSON(&out)
	f := calicoFailure(time.Date(2026, 3, 4, 14, 2, 11, 0, time.UTC), 4121)
	f.ContainerID = "0a1b"
	if err := w.Failure(f); err != nil {
		t.Fatal(err)
	}
	uid := uint32(1000)
	f2 := calicoFailure(time.Date(2026, 3, 4, 14, 2, 12, 0, time.UTC), 4121)
	f2.Pod, f2.Owner, f2.Cause, f2.Limit = nil, "kubelet.service", tracer.CauseRlimitNproc, &tracer.Limit{UID: &uid, Current: 5, Max: 5}
	w.Failure(f2)
	f3 := calicoFailure(time.Date(2026, 3, 4, 14, 2, 13, 0, time.UTC), 4121)
	f3.Cause, f3.Limit = tracer.CauseUnknown, nil
	w.Failure(f3)
	w.EventsLost(time.Date(2026, 3, 4, 14, 2, 14, 0, time.UTC), 3, 7)
	if out.Len() != 0 {
		t.Fatalf("wrote before Flush: %q", out.String())
	}
	w.Flush(time.Time{})
	want := `{"time":"2026-03-04T14:02:11Z","event":"fork_failed","syscall":"clone","errno":"EAGAIN","ret":-11,"pid":4121,"tid":4121,"uid":0,"comm":"calico-node","cgroup":"/kubepods/burstable/pod1/ctr","cause":"pids_cgroup","limit":{"cgroup":"/kubepods","current":49152,"max":49152},"pod":{"namespace":"kube-system","name":"calico-node-56bgm","uid":"1"},"container_id":"0a1b"}
{"time":"2026-03-04T14:02:12Z","event":"fork_failed","syscall":"clone","errno":"EAGAIN","ret":-11,"pid":4121,"tid":4121,"uid":0,"comm":"calico-node","cgroup":"/kubepods/burstable/pod1/ctr","cause":"rlimit_nproc","limit":{"uid":1000,"current":5,"max":5},"owner":"kubelet.service"}
{"time":"2026-03-04T14:02:13Z","event":"fork_failed","syscall":"clone","errno":"EAGAIN","ret":-11,"pid":4121,"tid":4121,"uid":0,"comm":"calico-node","cgroup":"/kubepods/burstable/pod1/ctr","cause":"unknown","pod":{"namespace":"kube-system","name":"calico-node-56bgm","uid":"1"}}
{"time":"2026-03-04T14:02:14Z","event":"events_lost","count":3,"total":7}
`
	if out.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", out.String(), want)
	}
}
