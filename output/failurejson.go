package output

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/forkwatch/forkwatch/output/node"
)

// appendFailure appends f's fork_failed object, exactly as encoding/json
// writes node.Failure (TestAppendFailureMatchesEncodingJSON holds the two
// together), and a newline. A failure storm is a stream of these: written
// by hand they cost a third of what reflection does, which is what lets the
// reader keep up with the ring buffer at 100k+ failures/s.
func appendFailure(b []byte, f *node.Failure) []byte {
	b = append(b, `{"time":`...)
	b = appendTime(b, f.Time)
	b = appendKey(b, "event")
	b = appendString(b, f.Event)
	b = appendKey(b, "syscall")
	b = appendString(b, f.Syscall)
	b = appendKey(b, "errno")
	b = appendString(b, f.Errno)
	b = appendKey(b, "ret")
	b = strconv.AppendInt(b, int64(f.Ret), 10)
	b = appendKey(b, "pid")
	b = strconv.AppendUint(b, uint64(f.PID), 10)
	b = appendKey(b, "tid")
	b = strconv.AppendUint(b, uint64(f.TID), 10)
	b = appendKey(b, "uid")
	b = strconv.AppendUint(b, uint64(f.UID), 10)
	b = appendKey(b, "comm")
	b = appendString(b, f.Comm)
	b = appendKey(b, "cgroup")
	b = appendString(b, f.Cgroup)
	b = appendKey(b, "cause")
	b = appendString(b, string(f.Cause))
	if l := f.Limit; l != nil {
		b = append(b, `,"limit":{`...)
		first := true
		sep := func(key string) {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '"')
			b = append(b, key...)
			b = append(b, `":`...)
		}
		if l.Cgroup != "" {
			sep("cgroup")
			b = appendString(b, l.Cgroup)
		}
		if l.PIDNamespace != 0 {
			sep("pid_namespace")
			b = strconv.AppendUint(b, l.PIDNamespace, 10)
		}
		if l.UID != nil {
			sep("uid")
			b = strconv.AppendUint(b, uint64(*l.UID), 10)
		}
		sep("current")
		b = strconv.AppendInt(b, l.Current, 10)
		sep("max")
		b = strconv.AppendInt(b, l.Max, 10)
		b = append(b, '}')
	}
	if f.IntoCgroup {
		b = append(b, `,"into_cgroup":true`...)
	}
	if p := f.Pod; p != nil {
		b = append(b, `,"pod":{"namespace":`...)
		b = appendString(b, p.Namespace)
		b = appendKey(b, "name")
		b = appendString(b, p.Name)
		b = appendKey(b, "uid")
		b = appendString(b, p.UID)
		b = append(b, '}')
	}
	if f.ContainerID != "" {
		b = appendKey(b, "container_id")
		b = appendString(b, f.ContainerID)
	}
	if f.Owner != "" {
		b = appendKey(b, "owner")
		b = appendString(b, f.Owner)
	}
	return append(b, "}\n"...)
}

func appendKey(b []byte, key string) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	return append(b, `":`...)
}

// appendTime writes t as time.Time's MarshalJSON does (RFC 3339 with
// nanoseconds, quoted).
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendString writes s as a JSON string. Commands and cgroup paths are
// plain ASCII nearly always; anything encoding/json would escape (quotes,
// control characters, <, > and &, non-ASCII) goes through encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || c >= utf8.RuneSelf {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
