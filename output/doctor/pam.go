package doctor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Nproc is an nproc limit (RLIMIT_NPROC, ulimit -u) that pam_limits sets at
// login for a domain, as limits.conf and limits.d/*.conf say.
//
// What it does and does not limit, which is why it was a red herring in
// the incidents where ulimit -u looked suspicious and was not the cause:
//   - pam_limits runs in PAM sessions only: ssh and console logins, su,
//     sudo, cron. systemd services (kubelet, containerd, dockerd) and the
//     containers they start never go through it; a service's limit is
//     LimitNPROC= in its unit.
//   - "*" does not apply to root: pam_limits applies wildcard and group
//     lines to other users only; root needs a literal "root" line.
//   - The kernel counts, against RLIMIT_NPROC, every task owned by the
//     caller's real UID, and does not enforce it at all for root (the host
//     user namespace's UID 0) or for callers with CAP_SYS_RESOURCE or
//     CAP_SYS_ADMIN.
type Nproc struct {
	Domain string `json:"domain"` // "*" or "root"
	Type   string `json:"type"`   // "soft" or "hard"
	Value  int64  `json:"value"`  // -1: unlimited
	Source string `json:"source"` // file:line of the line in force
}

// nprocDomains are the domains read: the wildcard, which covers the
// non-root users daemons may run as, and root.
var nprocDomains = []string{"*", "root"}

func (c *checker) readNproc() {
	files := []string{}
	if c.cfg.LimitsConf != "" {
		files = append(files, c.cfg.LimitsConf)
	}
	if c.cfg.LimitsDir != "" {
		// pam_limits reads limits.conf, then limits.d/*.conf in C-locale
		// order, as if concatenated: for the same domain, a later line
		// replaces an earlier one (CentOS's limits.d/20-nproc.conf with
		// "* soft nproc 4096" overrides limits.conf).
		more, _ := filepath.Glob(filepath.Join(c.cfg.LimitsDir, "*.conf"))
		sort.Strings(more)
		files = append(files, more...)
	}
	found := map[[2]string]Nproc{}
	for _, f := range files {
		lines, err := parseLimitsFile(f)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			c.readError(f, err)
			continue
		}
		for _, n := range lines {
			found[[2]string{n.Domain, n.Type}] = n
		}
	}
	for _, d := range nprocDomains {
		for _, t := range []string{"soft", "hard"} {
			if n, ok := found[[2]string{d, t}]; ok {
				c.r.Nproc = append(c.r.Nproc, n)
			}
		}
	}
}

// parseLimitsFile returns the nproc lines for the wildcard and root in a
// limits.conf-format file: "<domain> <type> <item> <value>", type soft,
// hard or "-" (both). Malformed lines are skipped, as pam_limits does.
func parseLimitsFile(file string) ([]Nproc, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Nproc
	sc := bufio.NewScanner(f)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) != 4 || fields[2] != "nproc" {
			continue
		}
		domain, typ, val := fields[0], fields[1], fields[3]
		if domain != "*" && domain != "root" {
			continue
		}
		v, ok := parseRlimit(val)
		if !ok {
			continue
		}
		src := fmt.Sprintf("%s:%d", file, lineNo)
		switch typ {
		case "soft", "hard":
			out = append(out, Nproc{domain, typ, v, src})
		case "-":
			out = append(out, Nproc{domain, "soft", v, src}, Nproc{domain, "hard", v, src})
		}
	}
	return out, sc.Err()
}

// parseRlimit parses a limits.conf value: a number, or -1, "unlimited",
// "infinity" for no limit (-1).
func parseRlimit(s string) (int64, bool) {
	switch strings.ToLower(s) {
	case "unlimited", "infinity", "-1":
		return -1, true
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, false
	}
	return v, true
}
