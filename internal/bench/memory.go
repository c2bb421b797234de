package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The cost of a sidecar in every pod, in memory: RSS at start (backups
// configured, no client) and with many idle clients in transaction mode
// (each past its startup, holding no upstream connection), for the
// sidecar and for PgBouncer with the same pool, one after the other.

// Memory targets of a sidecar in every pod.
const (
	memStartTargetMB     = 20    // RSS at start with backups configured
	memPerClientTargetKB = 8     // RSS per idle client
	memManyTargetMB      = 100   // RSS with memManyClients idle clients
	memManyClients       = 10000 // clients of the last measurement
)

// memPoint is one level of idle clients.
type memPoint struct {
	wanted, opened int
	rssKB          int64
}

// memTarget is one pooler's memory measurement.
type memTarget struct {
	name    string
	startKB int64      // VmRSS with no client
	points  []memPoint // ascending clients
	errors  []string   // distinct session errors with counts
	note    string     // why the measurement is incomplete, if it is
}

// perClientKB is the RSS added per idle client at p, above the start.
func (m memTarget) perClientKB(p memPoint) float64 {
	if p.opened == 0 {
		return 0
	}
	return float64(p.rssKB-m.startKB) / float64(p.opened)
}

// memSettle is how long a pooler is left idle before its RSS is read.
const memSettle = 2 * time.Second

// measureMemory measures the sidecar, then PgBouncer, in transaction mode
// with pool 10: RSS memSettle after start, then after opening idle
// clients up to each of levels (ascending).
func (b *bench) measureMemory(ctx context.Context, levels []int) ([]memTarget, error) {
	top := levels[len(levels)-1]
	var out []memTarget
	backupDir := filepath.Join(b.dir, "memory-backups")
	if err := os.MkdirAll(backupDir, 0o755); err != nil {
		return nil, err
	}
	side, err := b.startSidecar(ctx, "sidecar-memory", map[string]string{
		"POOL_MODE": modeTransaction, "POOL_SIZE": strconv.Itoa(txnPoolSize),
		"MAX_CLIENT_CONN": strconv.Itoa(top + 1000), "POOL_ACQUIRE_TIMEOUT": "2m",
		"BACKUP_PROVIDER": "local", "BACKUP_DESTINATION": backupDir,
	})
	if err != nil {
		return out, err
	}
	m, err := b.measureIdle(ctx, colSidecar, side.proc.pid(), side.addr.String(), levels)
	side.stop()
	out = append(out, m)
	if err != nil {
		return out, err
	}
	bouncer, addr, err := b.startPgBouncerFor(ctx, "pgbouncer-memory", modeTransaction, txnPoolSize, top+1000)
	if err != nil {
		return out, err
	}
	m, err = b.measureIdle(ctx, colBouncer, bouncer.proc.pid(), addr.String(), levels)
	bouncer.stop()
	return append(out, m), err
}

// measureIdle reads pid's RSS after memSettle, then opens idle sessions
// to addr up to each level and reads it again after each.
func (b *bench) measureIdle(ctx context.Context, name string, pid int, addr string, levels []int) (memTarget, error) {
	m := memTarget{name: name}
	read := func() (int64, error) {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(memSettle):
		}
		st, err := procStatus(pid)
		if err != nil {
			return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
		}
		return st["VmRSS"], nil
	}
	var err error
	if m.startKB, err = read(); err != nil {
		m.note = err.Error()
		return m, err
	}
	var conns []net.Conn
	errs := map[string]int{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	tried := 0
	for _, level := range levels {
		more, failed := b.openSessions(ctx, addr, level-tried, time.Minute)
		tried = level
		conns = append(conns, more...)
		for msg, n := range failed {
			errs[msg] += n
		}
		if ctx.Err() != nil {
			return m, ctx.Err()
		}
		rss, err := read()
		if err != nil {
			m.note = err.Error()
			return m, err
		}
		m.points = append(m.points, memPoint{wanted: level, opened: len(conns), rssKB: rss})
		b.logf("%s: %d/%d idle clients, VmRSS %.1f MB (start %.1f MB)", name, len(conns), level, mb(rss), mb(m.startKB))
	}
	for msg, count := range errs {
		m.errors = append(m.errors, fmt.Sprintf("%d× %s", count, msg))
	}
	sort.Strings(m.errors)
	if last := m.points[len(m.points)-1]; last.opened < last.wanted {
		m.note = fmt.Sprintf("only %d of %d sessions reached ReadyForQuery", last.opened, last.wanted)
	}
	return m, nil
}

// writeMemory renders the memory table: each pooler's figures and the
// targets, judged on the sidecar.
func writeMemory(b *strings.Builder, ms []memTarget) {
	b.WriteString("## Cost per pod: memory\n\n")
	if len(ms) == 0 {
		b.WriteString("Not measured.\n\n")
		return
	}
	fmt.Fprintf(b, "Transaction mode, pool %d, each pooler alone: RSS (VmRSS) %s after start with no client (the sidecar with backups configured to a local directory), then with idle clients (startup done, no transaction, so no upstream connection), %d opened at a time.\n\n", txnPoolSize, memSettle, rssConcurrency)
	var levels []int
	for _, p := range ms[0].points {
		levels = append(levels, p.wanted)
	}
	head := []string{"figure"}
	for _, m := range ms {
		head = append(head, m.name)
	}
	if len(ms) == 2 {
		head = append(head, ms[0].name+"/"+ms[1].name)
	}
	head = append(head, "target (sidecar)")
	fmt.Fprintf(b, "| %s |\n|---|%s\n", strings.Join(head, " | "), strings.Repeat("---:|", len(head)-1))
	row := func(label string, val func(m memTarget) (float64, bool), unit string, target string) {
		cells := []string{label}
		var vals []float64
		for _, m := range ms {
			v, ok := val(m)
			if !ok {
				cells = append(cells, "–")
				vals = append(vals, 0)
				continue
			}
			cells = append(cells, fmt.Sprintf("%.1f %s", v, unit))
			vals = append(vals, v)
		}
		if len(ms) == 2 {
			if vals[1] > 0 && vals[0] > 0 {
				cells = append(cells, fmt.Sprintf("%.1f×", vals[0]/vals[1]))
			} else {
				cells = append(cells, "n/a")
			}
		}
		fmt.Fprintf(b, "| %s | %s |\n", strings.Join(cells, " | "), target)
	}
	sidecar := ms[0]
	startOK := mb(sidecar.startKB) <= memStartTargetMB && sidecar.startKB > 0
	row("RSS at start", func(m memTarget) (float64, bool) { return mb(m.startKB), m.startKB > 0 }, "MB",
		fmt.Sprintf("≤ %d MB: **%s**", memStartTargetMB, verdict(startOK)))
	for i, level := range levels {
		judge := ""
		if i == 0 {
			p := sidecar.points[i]
			judge = fmt.Sprintf("≤ %d KB: **%s**", memPerClientTargetKB, verdict(p.opened == p.wanted && sidecar.perClientKB(p) <= memPerClientTargetKB))
		}
		row(fmt.Sprintf("RSS per idle client (%s clients)", thousands(level)), func(m memTarget) (float64, bool) {
			if i >= len(m.points) || m.points[i].opened == 0 {
				return 0, false
			}
			return m.perClientKB(m.points[i]), true
		}, "KB", judge)
	}
	for i, level := range levels {
		judge := ""
		if level == memManyClients {
			p := sidecar.points[i]
			judge = fmt.Sprintf("≤ %d MB: **%s**", memManyTargetMB, verdict(p.opened == p.wanted && mb(p.rssKB) <= memManyTargetMB))
		}
		row(fmt.Sprintf("RSS with %s idle clients", thousands(level)), func(m memTarget) (float64, bool) {
			if i >= len(m.points) {
				return 0, false
			}
			return mb(m.points[i].rssKB), m.points[i].rssKB > 0
		}, "MB", judge)
	}
	b.WriteString("\n")
	for _, m := range ms {
		if m.note != "" {
			fmt.Fprintf(b, "%s: %s.\n", m.name, m.note)
		}
		for _, e := range m.errors {
			fmt.Fprintf(b, "%s session error: %s\n", m.name, e)
		}
	}
	b.WriteString("\n")
}
