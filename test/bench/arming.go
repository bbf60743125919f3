package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"
)

// arming measures how long an always-on forkwatch (failure hooks armed by
// pressure) takes from a limit coming within reach to the failure hooks
// attached: the window in which a leak fast enough can reach its limit
// unseen by the hooks (its refusals are then counted from pids.events
// instead). Each round a pod with pids.max 100 grows to 45 tasks (a shell
// starting sleeps: within reach at 37), and the failure_hooks object's
// time is compared with its within_reach; then the pod is emptied and the
// hooks detach after the calm period. Rounds alternate between a quiet
// machine and one whose every core runs a shell forking flat out.
func arming(ctx context.Context, e *env, t *table) error {
	pr, pw := io.Pipe()
	fw, err := startForkwatch(ctx, e, pw, "-o", "json", "--failure-hooks", "pressure", "--failure-hooks-calm", "1s")
	if err != nil {
		return err
	}
	events, done := make(chan armingEvent, 16), make(chan struct{})
	defer func() {
		close(done) // the reader drops what comes after
		fw.stopClean()
		pw.Close()
	}()
	go func() {
		defer close(events)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev armingEvent
			if json.Unmarshal(sc.Bytes(), &ev) != nil || (ev.Event != "attached" && ev.Event != "failure_hooks") {
				continue
			}
			select {
			case events <- ev:
			case <-done:
			}
		}
	}()
	first, err := nextEvent(ctx, events)
	if err != nil {
		return err
	}
	hooks := first.FailureHooks
	if hooks == nil || hooks.Policy != "pressure" {
		t.add("failure hooks armed after a limit came within reach", fmt.Sprintf("not measured: in %s mode they are attached throughout", first.Mode), "—", "")
		return nil
	}
	var quiet, busy []float64 // ms
	for i := 0; i < 2**pairs; i++ {
		loaded := i%2 == 1
		if !loaded {
			waitQuiet(ctx)
		}
		d, err := armOnce(ctx, e, events, loaded)
		if err != nil {
			return err
		}
		ms := float64(d) / float64(time.Millisecond)
		if loaded {
			busy = append(busy, ms)
		} else {
			quiet = append(quiet, ms)
		}
	}
	what := func(load string) string {
		return fmt.Sprintf("failure hooks armed after a pod came within reach of its pids.max (%s)%s", load, modeNote())
	}
	t.add(what("quiet machine"), durations(quiet), "—", "")
	t.add(what(fmt.Sprintf("every core forking flat out, %d shells", e.cpus)), durations(busy), "—", "")
	return nil
}

type armingEvent struct {
	Time         time.Time `json:"time"`
	Event        string    `json:"event"`
	Mode         string    `json:"mode"`
	Armed        bool      `json:"armed"`
	WithinReach  time.Time `json:"within_reach"`
	FailureHooks *struct {
		Armed  bool   `json:"armed"`
		Policy string `json:"policy"`
	} `json:"failure_hooks"`
}

func nextEvent(ctx context.Context, events <-chan armingEvent) (armingEvent, error) {
	select {
	case ev, ok := <-events:
		if !ok {
			return ev, errors.New("forkwatch's output ended")
		}
		return ev, nil
	case <-time.After(30 * time.Second):
		return armingEvent{}, errors.New("forkwatch wrote no failure_hooks object within 30 s")
	case <-ctx.Done():
		return armingEvent{}, ctx.Err()
	}
}

// armOnce grows a new pod within reach of its limit, returns how long the
// hooks took to arm, and empties the pod and waits for them to detach.
func armOnce(ctx context.Context, e *env, events <-chan armingEvent, loaded bool) (time.Duration, error) {
	podDir, ctr, err := e.fakePod("burstable", "bench", "leak-"+randHex(2))
	if err != nil {
		return 0, err
	}
	defer removeTree(podDir)
	if err := writeFile(filepath.Join(podDir, "pids.max"), "100"); err != nil {
		return 0, err
	}
	if loaded {
		for range e.cpus {
			p := newProc(nil, "/bin/sh", "-c", "while :; do /bin/true; done")
			if err := p.start(); err != nil {
				return 0, err
			}
			defer p.stop()
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
	}
	grow := newProc(nil, "/bin/sh", "-c", `echo $$ > "$0/cgroup.procs"; for i in $(seq 45); do sleep 600 >/dev/null 2>&1 & done`, ctr)
	if err := grow.start(); err != nil {
		return 0, err
	}
	if err := grow.wait(ctx); err != nil {
		return 0, err
	}
	var armed armingEvent
	for !armed.Armed {
		if armed, err = nextEvent(ctx, events); err != nil {
			return 0, err
		}
	}
	if armed.WithinReach.IsZero() {
		return 0, errors.New("forkwatch's failure_hooks object has no within_reach")
	}
	if n, err := readInt(filepath.Join(podDir, "pids.current")); err != nil || n != 45 {
		return 0, fmt.Errorf("the pod holds %d tasks (%v), want 45", n, err)
	}
	removeTree(ctr)
	for ev := armed; ev.Armed; {
		if ev, err = nextEvent(ctx, events); err != nil {
			return 0, err
		}
	}
	return armed.Time.Sub(armed.WithinReach), nil
}

// durations says the median of ms (milliseconds), their spread and count.
func durations(ms []float64) string {
	if len(ms) == 0 {
		return "no rounds"
	}
	return fmt.Sprintf("%.1f ms (%d rounds, %.1f ms–%.1f ms)", median(ms), len(ms), slices.Min(ms), slices.Max(ms))
}
