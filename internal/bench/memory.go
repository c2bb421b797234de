package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The cost of a sidecar in every pod, in memory: RSS at start (backups
// configured, no client) and with many idle clients in transaction mode
// (each past its startup, holding no upstream connection), for the
// sidecar and for PgBouncer with the same pool, one after the other.
//
// An application's idle pooled connections have usually run statements,
// so the idle clients are measured twice: right after their startup, and
// after each has run one statement (memQuery) and gone idle again. Each
// reading waits for the pooler to settle: past the sidecar's idle point
// (every session dormant, by its gauge) and until the RSS stops changing.

// Memory targets of a sidecar in every pod.
const (
	memStartTargetMB     = 20    // RSS at start with backups configured
	memPerClientTargetKB = 8     // RSS per idle client
	memManyTargetMB      = 100   // RSS with memManyClients idle clients
	memManyClients       = 10000 // clients of the last measurement
)

// memQuery is the statement each idle client runs before idling.
const memQuery = "SELECT 1"

// memStep is one reading: clients idle sessions open, which have run
// memQuery when queried.
type memStep struct {
	clients int
	queried bool
}

// memSteps are the readings, in order: the first clients are opened,
// measured, then run memQuery and are measured again; the rest are opened
// running memQuery.
var memSteps = []memStep{{1000, false}, {1000, true}, {memManyClients, true}}

// memPoint is one reading of idle clients.
type memPoint struct {
	wanted, opened int
	rssKB          int64
	queried        bool // the clients ran memQuery before idling
}

// memTarget is one pooler's memory measurement.
type memTarget struct {
	name    string
	startKB int64      // VmRSS with no client
	points  []memPoint // in memSteps order
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

// memSettle is how long a pooler is left idle before its RSS is read; it
// is longer than the sidecar's default CLIENT_IDLE_RELEASE (1 s).
const memSettle = 2 * time.Second

// Once settled, the RSS is read every memStableEvery until the readings of
// the last memStableFor stay within memStableKB of each other, for up to
// memStableWithin. memStableFor is longer than the few seconds a quiet
// sidecar takes to return what dormant sessions let go of (proxy's
// reclaimDelay, 2 s, twice when the runtime collected meanwhile).
const (
	memStableEvery  = time.Second
	memStableFor    = 6 * time.Second
	memStableKB     = 256
	memStableWithin = time.Minute
)

// measureMemory measures the sidecar, then PgBouncer, in transaction mode
// with pool 10: RSS memSettle after start, then at each of memSteps.
func (b *bench) measureMemory(ctx context.Context) ([]memTarget, error) {
	top := memSteps[len(memSteps)-1].clients
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
	metricsURL := "http://" + side.adminAddr.String() + "/metrics"
	dormant := func(ctx context.Context, n int) error { return b.waitDormant(ctx, metricsURL, n) }
	m, err := b.measureIdle(ctx, colSidecar, side.proc.pid(), side.addr.String(), dormant, metricsURL)
	side.stop()
	out = append(out, m)
	if err != nil {
		return out, err
	}
	bouncer, addr, err := b.startPgBouncerFor(ctx, "pgbouncer-memory", modeTransaction, txnPoolSize, top+1000)
	if err != nil {
		return out, err
	}
	m, err = b.measureIdle(ctx, colBouncer, bouncer.proc.pid(), addr.String(), nil, "")
	bouncer.stop()
	return append(out, m), err
}

// waitDormant polls the sidecar's metrics until n client sessions are
// dormant (idle past CLIENT_IDLE_RELEASE), for up to a minute.
func (b *bench) waitDormant(ctx context.Context, metricsURL string, n int) error {
	deadline := time.Now().Add(time.Minute)
	last := -1.0
	for {
		ms, err := scrapeMetrics(ctx, metricsURL, "brownie_sidecar_client_connections_dormant")
		if err == nil {
			last = ms["brownie_sidecar_client_connections_dormant"]
			if int(last) == n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v of %d sessions dormant after a minute (last error: %v)", last, n, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// scrapeMetrics reads the unlabelled series of names from a Prometheus
// text endpoint.
func scrapeMetrics(ctx context.Context, url string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			out[name] = f
		}
	}
	return out, sc.Err()
}

// goMemSeries are the Go runtime figures logged beside the sidecar's RSS,
// to tell heap, stacks and memory not yet returned to the system apart.
var goMemSeries = []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes",
	"go_memstats_heap_released_bytes", "go_memstats_stack_inuse_bytes", "go_gc_duration_seconds_count"}

// measureIdle reads pid's RSS after memSettle, then opens idle sessions
// to addr for each of memSteps and reads it again, once settled: after
// dormant (when not nil) reports every session idle past its idle point,
// and the RSS is stable. metricsURL, when set, is scraped for goMemSeries
// to log beside each reading.
func (b *bench) measureIdle(ctx context.Context, name string, pid int, addr string,
	dormant func(context.Context, int) error, metricsURL string) (memTarget, error) {
	m := memTarget{name: name}
	wait := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	rss := func() (int64, error) {
		st, err := procStatus(pid)
		if err != nil {
			return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
		}
		return st["VmRSS"], nil
	}
	// settled reads the RSS once n sessions are dormant and it is stable.
	settled := func(n int) (int64, error) {
		if err := wait(memSettle); err != nil {
			return 0, err
		}
		if dormant != nil {
			if err := dormant(ctx, n); err != nil {
				return 0, err
			}
		}
		var window []int64 // readings of the last memStableFor
		for end := time.Now().Add(memStableWithin); ; {
			cur, err := rss()
			if err != nil {
				return 0, err
			}
			window = append(window, cur)
			if n := int(memStableFor/memStableEvery) + 1; len(window) > n {
				window = window[len(window)-n:]
			}
			if len(window) > int(memStableFor/memStableEvery) && slices.Max(window)-slices.Min(window) <= memStableKB {
				return cur, nil
			}
			if time.Now().After(end) {
				return cur, nil
			}
			if err := wait(memStableEvery); err != nil {
				return 0, err
			}
		}
	}
	logRuntime := func() {
		if metricsURL == "" {
			return
		}
		ms, err := scrapeMetrics(ctx, metricsURL, goMemSeries...)
		if err != nil {
			return
		}
		var parts []string
		for _, s := range goMemSeries {
			parts = append(parts, fmt.Sprintf("%s=%.0f", strings.TrimPrefix(s, "go_memstats_"), ms[s]))
		}
		b.logf("%s runtime: %s", name, strings.Join(parts, " "))
	}
	var err error
	if m.startKB, err = settled(0); err != nil {
		m.note = err.Error()
		return m, err
	}
	b.logf("%s: no client, VmRSS %.1f MB (%s)", name, mb(m.startKB), rssSplit(pid))
	logRuntime()
	var conns []net.Conn
	queried := 0 // conns[:queried] ran memQuery
	errs := map[string]int{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, step := range memSteps {
		if step.queried && queried < len(conns) {
			failed := runOnSessions(ctx, conns[queried:], memQuery, time.Minute)
			for msg, n := range failed {
				errs[msg] += n
			}
			queried = len(conns)
		}
		if more := step.clients - len(conns); more > 0 {
			q := ""
			if step.queried {
				q = memQuery
			}
			opened, failed := b.openSessions(ctx, addr, more, q, time.Minute)
			conns = append(conns, opened...)
			if step.queried {
				queried = len(conns)
			}
			for msg, n := range failed {
				errs[msg] += n
			}
		}
		if ctx.Err() != nil {
			return m, ctx.Err()
		}
		kb, err := settled(len(conns))
		if err != nil {
			m.note = err.Error()
			return m, err
		}
		m.points = append(m.points, memPoint{wanted: step.clients, opened: len(conns), rssKB: kb, queried: step.queried})
		b.logf("%s: %d/%d idle clients (%s), VmRSS %.1f MB (%s; start %.1f MB)", name, len(conns), step.clients, stepLabel(step.queried), mb(kb), rssSplit(pid), mb(m.startKB))
		logRuntime()
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

// rssSplit tells pid's resident file pages (the binary and libraries,
// clean and shared between processes mapping the same files) from its
// anonymous memory (heap, stacks), for the log.
func rssSplit(pid int) string {
	st, err := procStatus(pid)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("RssFile %.1f MB, RssAnon %.1f MB", mb(st["RssFile"]), mb(st["RssAnon"]))
}

// stepLabel says what idle clients did before idling.
func stepLabel(queried bool) string {
	if queried {
		return "after `" + memQuery + "`"
	}
	return "startup only"
}

// writeMemory renders the memory table: each pooler's figures and the
// targets, judged on the sidecar's clients that ran a statement.
func writeMemory(b *strings.Builder, ms []memTarget) {
	b.WriteString("## Cost per pod: memory\n\n")
	if len(ms) == 0 {
		b.WriteString("Not measured.\n\n")
		return
	}
	fmt.Fprintf(b, "Transaction mode, pool %d, each pooler alone: RSS (VmRSS) with no client (the sidecar with backups configured to a local directory), then with idle clients (startup done, then `%s` run, no transaction open, so no upstream connection), %d opened at a time. Each reading is taken at least %s after the clients went idle, once every sidecar session is dormant and the RSS has stayed within %d KB for %s.\n\n", txnPoolSize, memQuery, rssConcurrency, memSettle, memStableKB, memStableFor)
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
	// The per-client target is judged on the first reading of clients
	// that ran a statement, the 10,000-client one on the last reading.
	perJudged, manyJudged := -1, -1
	for i, p := range sidecar.points {
		if p.queried && perJudged < 0 {
			perJudged = i
		}
		if p.queried && p.wanted == memManyClients {
			manyJudged = i
		}
	}
	point := func(m memTarget, i int) (memPoint, bool) {
		if i >= len(m.points) || m.points[i].opened == 0 {
			return memPoint{}, false
		}
		return m.points[i], true
	}
	for i, p := range sidecar.points {
		judge := ""
		if i == perJudged {
			judge = fmt.Sprintf("≤ %d KB: **%s**", memPerClientTargetKB, verdict(p.opened == p.wanted && sidecar.perClientKB(p) <= memPerClientTargetKB))
		}
		row(fmt.Sprintf("RSS per idle client (%s clients, %s)", thousands(p.wanted), stepLabel(p.queried)), func(m memTarget) (float64, bool) {
			q, ok := point(m, i)
			return m.perClientKB(q), ok
		}, "KB", judge)
	}
	for i, p := range sidecar.points {
		if p.wanted != memManyClients {
			continue
		}
		judge := ""
		if i == manyJudged {
			judge = fmt.Sprintf("≤ %d MB: **%s**", memManyTargetMB, verdict(p.opened == p.wanted && mb(p.rssKB) <= memManyTargetMB))
		}
		row(fmt.Sprintf("RSS with %s idle clients (%s)", thousands(p.wanted), stepLabel(p.queried)), func(m memTarget) (float64, bool) {
			q, ok := point(m, i)
			return mb(q.rssKB), ok && q.rssKB > 0
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
