package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// rss runs forkwatch for --rss-minutes with --rss-cgroups pod cgroups on the
// node, a short-lived task in one of them every 100 ms (each sees one every
// ~50 s), and its metrics scraped every 5 s, and reads its peak RSS. It also
// reports forkwatch's CPU over the run.
func rss(ctx context.Context, e *env, t *table) error {
	cgs, err := e.manyPods(*rssCgroups)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	fw, err := startForkwatch(ctx, e, nil, "-o", "json", "--metrics-addr", addr)
	if err != nil {
		return err
	}
	defer fw.stop()
	hwmStart, err := status(fw.pid(), "VmHWM")
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	scrape := func() error {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}

	d := time.Duration(*rssMinutes * float64(time.Minute))
	progress("peak RSS: %s with %d pod cgroups", d, len(cgs))
	start := time.Now()
	cpu0 := mustCPU(fw.pid())
	var maxRSS int64
	lastScrape, lastReport := time.Time{}, start
	for i := 0; time.Since(start) < d; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := runOutput(ctx, *stormBin, "churn", "--kind", "process", "--duration", "1ms", "--cgroup", cgs[i%len(cgs)]); err != nil {
			return err
		}
		if time.Since(lastScrape) >= 5*time.Second {
			if err := scrape(); err != nil {
				return fmt.Errorf("scraping forkwatch's metrics: %w", err)
			}
			lastScrape = time.Now()
		}
		if cur, err := status(fw.pid(), "VmRSS"); err == nil {
			maxRSS = max(maxRSS, cur)
		}
		if time.Since(lastReport) >= time.Minute {
			hwm, _ := status(fw.pid(), "VmHWM")
			cur, _ := status(fw.pid(), "VmRSS")
			progress("peak RSS: %s of %s, VmRSS %.1f MiB, VmHWM %.1f MiB", time.Since(start).Round(time.Second), d, mib(cur), mib(hwm))
			lastReport = time.Now()
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	cpu := float64(mustCPU(fw.pid())-cpu0) / float64(time.Since(start))
	hwm, err := status(fw.pid(), "VmHWM")
	if err != nil {
		return err
	}
	cur, _ := status(fw.pid(), "VmRSS")
	parts := rssParts(fw.pid())
	t.add(fmt.Sprintf("peak RSS (VmHWM) after %s, %d pod cgroups, metrics scraped", fmtMinutes(*rssMinutes), len(cgs)),
		fmt.Sprintf("%.1f MiB (%.1f at attach; at the end VmRSS %.1f = ring buffer mapped twice %.1f + binary %.1f + heap and stacks %.1f)",
			mib(hwm), mib(hwmStart), mib(cur), mib(parts.ring), mib(parts.binary), mib(parts.anon)),
		"< 40 MiB", verdict(hwm < 40<<10))
	t.add(fmt.Sprintf("forkwatch CPU over that run, %d pods", len(cgs)),
		fmt.Sprintf("%.2f%% of a core (%.1f MiB highest VmRSS sampled)", cpu*100, mib(maxRSS)), "", "")
	return fw.stopClean()
}

type rssBreakdown struct{ ring, binary, anon int64 }

// rssParts splits a process's resident memory (kB) by mapping: BPF maps
// mapped into it (the ring buffer: its data pages are mapped twice, so
// that a record never wraps), its executable, the rest (heap, stacks).
func rssParts(pid int) rssBreakdown {
	var r rssBreakdown
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return r
	}
	defer f.Close()
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	name := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		fields := strings.Fields(l)
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			name = ""
			if len(fields) >= 6 {
				name = strings.Join(fields[5:], " ")
			}
			continue
		}
		if fields[0] != "Rss:" || len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch {
		case strings.HasPrefix(name, "anon_inode:bpf"):
			r.ring += kb
		case name == exe:
			r.binary += kb
		default:
			r.anon += kb
		}
	}
	return r
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

func fmtMinutes(m float64) string {
	if m == float64(int(m)) {
		return fmt.Sprintf("%d min", int(m))
	}
	return fmt.Sprintf("%.1f min", m)
}
