package threads

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reader reads the names of processes' threads from a proc filesystem:
// /proc/PID/comm for the process, /proc/PID/task/ for its threads and
// /proc/PID/task/TID/comm for a thread's name. Its buffers are reused: a
// reading allocates nothing per thread.
//
// A thread's name is read when it is first listed, again when it is next
// listed (a thread is named by itself or its creator right after it
// starts), then every refreshReads times it is listed, staggered by TID;
// in between the name read last stands: a rename, or a TID reused by a
// new thread, shows within refreshReads readings. A thread costs its
// entry in the listing, and an open, a read and a close a tenth of the
// time. Not safe for concurrent use.
type Reader struct {
	Proc string // where proc is mounted, "/proc" if empty

	names  map[int]threadName // by TID
	intern map[string]string  // the names read, each kept once
	round  int

	pids  []int
	buf   []byte // cgroup.procs
	dents []byte // getdents64
	path  []byte // NUL-terminated paths
	name  [64]byte
	fold  []byte
	index map[string]int // one process's groups: folded name → index in the reading
	cut   []bool         // one process's groups: named from a name the kernel may have cut
}

type threadName struct {
	name   string // as read, unfolded
	seen   int    // the round it was last listed in
	unread int    // times listed since its name was read
	again  bool   // read once: read again when next listed
}

// refreshReads: a thread's name is read again every this many times it
// is listed. forgetRounds: a thread not listed for this many rounds is
// forgotten (within twice as many).
const (
	refreshReads = 10
	forgetRounds = 60
)

// EndRound ends a round of readings (the sampler's second): threads not
// listed for forgetRounds are forgotten.
func (r *Reader) EndRound() {
	r.round++
	if r.round%forgetRounds != 0 {
		return
	}
	intern := make(map[string]string, len(r.intern))
	for tid, n := range r.names {
		if r.round-n.seen > forgetRounds {
			delete(r.names, tid)
			continue
		}
		intern[n.name] = n.name
	}
	r.intern = intern
}

// threadName returns the name of thread tid (its /proc/PID/task entry is
// dir), read or as read before.
func (r *Reader) threadName(dir int, tid []byte) (string, error) {
	id, ok := atoi(tid)
	if !ok {
		return "", unix.ENOENT
	}
	n, known := r.names[id]
	n.seen = r.round
	if known && !n.again && n.unread+1 < refreshReads {
		n.unread++
		r.names[id] = n
		return n.name, nil
	}
	r.path = append(append(r.path[:0], tid...), "/comm\x00"...)
	m, err := readAt(dir, r.path, r.name[:])
	if err != nil {
		return "", err
	}
	b := trimNL(r.name[:m])
	s, ok := r.intern[string(b)]
	if !ok {
		s = string(b)
		r.intern[s] = s
	}
	n.name, n.unread, n.again = s, 0, !known
	if !known {
		n.unread = id % refreshReads // staggered: not every name is due at once
	}
	r.names[id] = n
	return s, nil
}

// gone reports an error that means the task or cgroup ended while it was
// read: not a failure.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

// Cgroup adds to rd every process of the cgroup at dir and of the cgroups
// below it (a pod's cgroup and its containers'). A cgroup removed
// meanwhile is skipped.
func (r *Reader) Cgroup(dir string, rd *Reading) error {
	r.pids = r.pids[:0]
	if err := r.procs(dir); err != nil {
		return err
	}
	slices.Sort(r.pids) // cgroup v1 may list a process twice
	r.pids = slices.Compact(r.pids)
	for _, pid := range r.pids {
		if err := r.Process(pid, rd); err != nil {
			return err
		}
	}
	return nil
}

// procs collects the PIDs in dir's cgroup.procs and its children's.
func (r *Reader) procs(dir string) error {
	if err := r.readProcs(filepath.Join(dir, "cgroup.procs")); err != nil && !gone(err) {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if gone(err) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := r.procs(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// readProcs adds the PIDs a cgroup.procs file lists.
func (r *Reader) readProcs(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	r.buf = r.buf[:0]
	for {
		if len(r.buf) == cap(r.buf) {
			r.buf = slices.Grow(r.buf, 4096)
		}
		n, err := f.Read(r.buf[len(r.buf):cap(r.buf)])
		r.buf = r.buf[:len(r.buf)+n]
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			return err
		}
	}
	for line := range bytes.SplitSeq(r.buf, []byte{'\n'}) {
		if pid, ok := atoi(line); ok {
			r.pids = append(r.pids, pid)
		}
	}
	return nil
}

// Process adds the threads of process pid to rd. A process that has exited
// adds nothing.
func (r *Reader) Process(pid int, rd *Reading) error {
	proc := r.Proc
	if proc == "" {
		proc = "/proc"
	}
	r.path = append(append(r.path[:0], proc...), '/')
	r.path = strconv.AppendInt(r.path, int64(pid), 10)
	dirLen := len(r.path)
	r.path = append(r.path, "/comm\x00"...)
	n, err := readAt(unix.AT_FDCWD, r.path, r.name[:])
	if err != nil {
		if gone(err) {
			return nil
		}
		return err
	}
	comm := string(trimNL(r.name[:n]))
	r.path = append(r.path[:dirLen], "/task\x00"...)
	dfd, err := openat(unix.AT_FDCWD, r.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		if gone(err) {
			return nil
		}
		return err
	}
	defer unix.Close(dfd)
	if r.index == nil {
		r.index = map[string]int{}
		r.names = map[int]threadName{}
		r.intern = map[string]string{}
	}
	clear(r.index)
	first := len(rd.Groups)
	r.cut = r.cut[:0]
	if cap(r.dents) == 0 {
		r.dents = make([]byte, 16<<10)
	}
	r.dents = r.dents[:cap(r.dents)]
	threads := 0
	for {
		n, err := unix.Getdents(dfd, r.dents)
		if err != nil {
			if gone(err) {
				break
			}
			return err
		}
		if n <= 0 {
			break
		}
		for b := r.dents[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name
			reclen := int(b[16]) | int(b[17])<<8
			if reclen < 19 || reclen > len(b) {
				break
			}
			tid := b[19:reclen]
			if i := bytes.IndexByte(tid, 0); i >= 0 {
				tid = tid[:i]
			}
			b = b[reclen:]
			if len(tid) == 0 || tid[0] < '0' || tid[0] > '9' {
				continue // "." and ".."
			}
			read, err := r.threadName(dfd, tid)
			if err != nil {
				if gone(err) {
					continue // the thread exited since the listing
				}
				return err
			}
			name := append(r.name[:0], read...)
			cut := false
			if string(name) != comm {
				cut = len(name) >= CommLen
				r.fold = Fold(r.fold[:0], name)
				name = r.fold
			}
			if i, ok := r.index[string(name)]; ok {
				rd.Groups[i].Count++
			} else {
				s := string(name)
				r.index[s] = len(rd.Groups)
				rd.Groups = append(rd.Groups, Group{Name: s, Comm: comm, PID: pid, Count: 1})
				r.cut = append(r.cut, cut)
			}
			threads++
		}
	}
	if threads > 0 {
		rd.Threads += threads
		rd.Processes++
	}
	rd.Groups = mergeCut(rd.Groups, first, r.cut)
	return nil
}

// mergeCut merges, among one process's groups (groups[first:]), each group
// named from cut names into the group with the longest name that its stem
// begins. As a JVM's pool numbers grow, pool-99-thread-1 is kept as
// pool-99-thread- (pool-*-thread-*), pool-999-thread-1 as pool-999-thread
// (pool-*-thread*), pool-9999-thread-1 as pool-9999-threa (pool-*-threa*):
// one pool, one group, pool-*-thread-*. The threads never named (the
// process's own name) stay apart.
func mergeCut(groups []Group, first int, cut []bool) []Group {
	own := groups[first:]
	merged := false
	for i := range own {
		if !cut[i] {
			continue
		}
		stem := own[i].Name[:len(own[i].Name)-1] // without the "*" that ends a cut name
		into := -1
		for j := range own {
			n := own[j].Name
			if own[j].Count == 0 || len(n) <= len(own[i].Name) || n[:len(stem)] != stem || n == own[j].Comm {
				continue
			}
			if into < 0 || len(n) > len(own[into].Name) {
				into = j
			}
		}
		if into >= 0 {
			own[into].Count += own[i].Count
			own[i].Count = 0
			merged = true
		}
	}
	if !merged {
		return groups
	}
	out := groups[:first]
	for _, g := range own {
		if g.Count > 0 {
			out = append(out, g)
		}
	}
	return out
}

// openat opens the NUL-terminated path relative to dirfd without
// allocating (unix.Openat copies the path to a new C string).
func openat(dirfd int, path []byte, flags int) (int, error) {
	fd, _, errno := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&path[0])), uintptr(flags), 0, 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// readAt reads the small file at the NUL-terminated path relative to dirfd
// into buf.
func readAt(dirfd int, path, buf []byte) (int, error) {
	fd, err := openat(dirfd, path, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return 0, err
	}
	n, err := unix.Read(fd, buf)
	unix.Close(fd)
	if err != nil {
		return 0, err
	}
	return n, nil
}

func trimNL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		return b[:n-1]
	}
	return b
}

func atoi(b []byte) (int, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
