package output

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/forkwatch/forkwatch/output/node"
	"github.com/forkwatch/forkwatch/output/node/kube"
	"github.com/forkwatch/forkwatch/tracer"
)

// fork_failed objects are written by hand for speed; their bytes must be
// those encoding/json writes for node.Failure, field for field.
func TestAppendFailureMatchesEncodingJSON(t *testing.T) {
	uid := uint32(1000)
	at := time.Date(2026, 3, 4, 14, 2, 11, 123456789, time.UTC)
	cases := map[string]func(f *node.Failure){
		"pids cgroup, pod": func(f *node.Failure) { f.ContainerID = "0a1b" },
		"whole second":     func(f *node.Failure) { f.Time = at.Truncate(time.Second) },
		"local zone":       func(f *node.Failure) { f.Time = at.In(time.FixedZone("CET", 3600)) },
		"rlimit, owner": func(f *node.Failure) {
			f.Pod, f.Owner, f.Cause, f.Limit = nil, "kubelet.service", tracer.CauseRlimitNproc, &tracer.Limit{UID: &uid, Current: 5, Max: 5}
		},
		"uid 0 limit": func(f *node.Failure) { zero := uint32(0); f.Limit = &tracer.Limit{UID: &zero} },
		"pid_max": func(f *node.Failure) {
			f.Cause, f.Limit = tracer.CausePidMax, &tracer.Limit{PIDNamespace: 4026531836, Current: 32768, Max: 32768}
		},
		"unknown, no limit": func(f *node.Failure) { f.Cause, f.Limit = tracer.CauseUnknown, nil },
		"into cgroup":       func(f *node.Failure) { f.IntoCgroup = true },
		"no pod":            func(f *node.Failure) { f.Pod = nil },
		"pod without name":  func(f *node.Failure) { f.Pod = &kube.Pod{UID: "5d3c"} },
		"escapes":           func(f *node.Failure) { f.Comm, f.Cgroup = "a\"b\\c\n<&>", "/x/\x01y" },
		"non-ASCII":         func(f *node.Failure) { f.Comm, f.Owner = "naïve\u2028", "svc\xff" },
		"negative ret":      func(f *node.Failure) { f.Ret, f.Errno = -12, "ENOMEM" },
		"empty strings":     func(f *node.Failure) { *f = node.Failure{} },
	}
	for name, change := range cases {
		t.Run(name, func(t *testing.T) {
			f := calicoFailure(at, 4122)
			change(f)
			checkAppendFailure(t, f)
		})
	}
}

func checkAppendFailure(t *testing.T, f *node.Failure) {
	t.Helper()
	var want bytes.Buffer
	if err := json.NewEncoder(&want).Encode(f); err != nil {
		t.Skipf("encoding/json refuses it: %v", err)
	}
	if got := appendFailure(nil, f); !bytes.Equal(got, want.Bytes()) {
		t.Errorf("got  %s\nwant %s", got, want.Bytes())
	}
}

func FuzzAppendFailure(f *testing.F) {
	f.Add("calico-node", "/kubepods/burstable/pod1/ctr", "kubelet.service", int64(1772632931123456789), int32(-11), uint64(0), true)
	f.Add("a\"<>&\x00", "/\u2028", "\xff", int64(0), int32(0), uint64(7), false)
	f.Fuzz(func(t *testing.T, comm, cgroup, owner string, ns int64, ret int32, pidns uint64, pod bool) {
		fl := &node.Failure{Failure: tracer.Failure{
			Time: time.Unix(0, ns).UTC(), Event: "fork_failed", Syscall: "clone3", Errno: "EAGAIN", Ret: ret,
			Comm: comm, Cgroup: cgroup, Cause: tracer.CausePidMax,
			Limit: &tracer.Limit{Cgroup: cgroup, PIDNamespace: pidns, Current: int64(ret), Max: ns},
		}, Who: node.Who{Owner: owner, ContainerID: comm}}
		if pod {
			fl.Pod = &kube.Pod{Namespace: owner, Name: comm, UID: cgroup}
		}
		checkAppendFailure(t, fl)
	})
}

func BenchmarkJSONFailure(b *testing.B) {
	w := NewJSON(discard{})
	f := calicoFailure(time.Now(), 4121)
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Failure(f); err != nil {
			b.Fatal(err)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
