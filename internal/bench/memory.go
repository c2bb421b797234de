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
	// rounds is the number of rounds combined (combineMemory), 0 for a
	// single one; startSpreadKB the range of their readings at start.
	rounds        int
	startSpreadKB int64
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

// measureMemory measures the memory targets (the sidecar, PgBouncer and,
// with -reference, the second PgBouncer) -repeat times each: the targets
// of a round one after the other, each alone, every round starting one
// target further along (roundOrder), as the pgbench tables do. It returns
// per target the medians of its rounds (combineMemory), in that order,
// the sidecar first and PgBouncer second.
func (b *bench) measureMemory(ctx context.Context) ([]memTarget, error) {
	names := []string{colSidecar, colBouncer}
	if b.opts.reference {
		names = append(names, colBouncerAA)
	}
	runs := make([][]memTarget, len(names))
	combined := func() []memTarget {
		out := make([]memTarget, 0, len(names))
		for i, name := range names {
			if len(runs[i]) > 0 {
				out = append(out, combineMemory(runs[i]))
			} else {
				out = append(out, memTarget{name: name, note: "not measured"})
			}
		}
		return out
	}
	for round := range b.opts.repeat {
		for _, i := range roundOrder(len(names), round) {
			m, err := b.measureMemoryOf(ctx, names[i], round)
			runs[i] = append(runs[i], m)
			if err != nil {
				return combined(), err
			}
		}
	}
	return combined(), nil
}

// measureMemoryOf measures one target (colSidecar, colBouncer or
// colBouncerAA) in transaction mode with pool 10, started for this round
// alone: RSS memSettle after start, then at each of memSteps.
func (b *bench) measureMemoryOf(ctx context.Context, name string, round int) (memTarget, error) {
	top := memSteps[len(memSteps)-1].clients
	dir := fmt.Sprintf("%s-memory-r%d", name, round+1)
	// Each pooler starts from an executable read from disk, as a pod's
	// comes from its image (evictFileCache).
	bin := b.sidecar
	if name != colSidecar {
		bin = b.bouncer
	}
	if err := evictFileCache(bin); err != nil {
		return memTarget{name: name, note: err.Error()}, err
	}
	if name != colSidecar {
		bouncer, addr, err := b.startPgBouncerFor(ctx, dir, modeTransaction, txnPoolSize, top+1000)
		if err != nil {
			return memTarget{name: name, note: err.Error()}, err
		}
		defer bouncer.stop()
		return b.measureIdle(ctx, name, bouncer.proc.pid(), addr.String(), nil, "")
	}
	backupDir := filepath.Join(b.dir, dir+"-backups")
	if err := os.MkdirAll(backupDir, 0o755); err != nil {
		return memTarget{name: name, note: err.Error()}, err
	}
	side, err := b.startSidecar(ctx, dir, map[string]string{
		"POOL_MODE": modeTransaction, "POOL_SIZE": strconv.Itoa(txnPoolSize),
		"MAX_CLIENT_CONN": strconv.Itoa(top + 1000), "POOL_ACQUIRE_TIMEOUT": "2m",
		"BACKUP_PROVIDER": "local", "BACKUP_DESTINATION": backupDir,
	})
	if err != nil {
		return memTarget{name: name, note: err.Error()}, err
	}
	defer side.stop()
	metricsURL := "http://" + side.adminAddr.String() + "/metrics"
	dormant := func(ctx context.Context, n int) error { return b.waitDormant(ctx, metricsURL, n) }
	return b.measureIdle(ctx, name, side.proc.pid(), side.addr.String(), dormant, metricsURL)
}

// combineMemory folds one target's rounds into one memTarget: each RSS
// reading (at start, and at each step) is the median of the rounds that
// took it, the clients opened at a step the fewest any round opened, and
// the notes and session errors of every round are kept. A single round is
// returned unchanged.
func combineMemory(runs []memTarget) memTarget {
	if len(runs) == 1 {
		return runs[0]
	}
	out := memTarget{name: runs[0].name, rounds: len(runs)}
	var start []float64
	for _, m := range runs {
		if m.startKB > 0 {
			start = append(start, float64(m.startKB))
		}
	}
	out.startKB = int64(median(start))
	if len(start) > 1 {
		out.startSpreadKB = int64(slices.Max(start) - slices.Min(start))
	}
	for i := 0; ; i++ {
		var rss []float64
		var p memPoint
		for _, m := range runs {
			if i >= len(m.points) {
				continue
			}
			q := m.points[i]
			if len(rss) == 0 || q.opened < p.opened {
				p.wanted, p.opened, p.queried = q.wanted, q.opened, q.queried
			}
			rss = append(rss, float64(q.rssKB))
		}
		if len(rss) == 0 {
			break
		}
		p.rssKB = int64(median(rss))
		out.points = append(out.points, p)
	}
	var notes []string
	for r, m := range runs {
		if m.note != "" {
			notes = append(notes, fmt.Sprintf("round %d: %s", r+1, m.note))
		}
		for _, e := range m.errors {
			out.errors = append(out.errors, fmt.Sprintf("round %d: %s", r+1, e))
		}
	}
	out.note = strings.Join(notes, "; ")
	return out
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
	fmt.Fprintf(b, "Transaction mode, pool %d, each pooler alone, started from an executable dropped from the page cache (read from disk by faults, as a pod reads its image; not left in the page cache as the linker wrote it): RSS (VmRSS) with no client (the sidecar with backups configured to a local directory), then with idle clients (startup done, then `%s` run, no transaction open, so no upstream connection), %d opened at a time. Each reading is taken at least %s after the clients went idle, once every sidecar session is dormant and the RSS has stayed within %d KB for %s.\n\n", txnPoolSize, memQuery, rssConcurrency, memSettle, memStableKB, memStableFor)
	if rounds := ms[0].rounds; rounds > 1 {
		fmt.Fprintf(b, "Every figure is the median of %d rounds, the poolers taking turns round by round, each started afresh; a per-client figure is taken from the medians of its reading and of the start.\n\n", rounds)
	}
	// Every other target is set against PgBouncer, the second column.
	head := []string{"figure"}
	for _, m := range ms {
		head = append(head, m.name)
	}
	var vs []int
	if len(ms) >= 2 {
		for i := range ms {
			if i != 1 {
				vs = append(vs, i)
				head = append(head, ms[i].name+"/"+ms[1].name)
			}
		}
	}
	head = append(head, "target (sidecar)")
	fmt.Fprintf(b, "| %s |\n|---|%s\n", strings.Join(head, " | "), strings.Repeat("---:|", len(head)-1))
	var aaRatios []float64 // the second PgBouncer's figures over the first's
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
		for _, i := range vs {
			if vals[1] <= 0 || vals[i] <= 0 {
				cells = append(cells, "n/a")
				continue
			}
			cells = append(cells, fmt.Sprintf("%.1f×", vals[i]/vals[1]))
			if ms[i].name == colBouncerAA {
				aaRatios = append(aaRatios, vals[i]/vals[1])
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
	if len(aaRatios) > 0 {
		fmt.Fprintf(b, "Control: a second PgBouncer configured like the first measured %.2f–%.2f of its figures: the noise of a ratio of two equal poolers.\n\n", slices.Min(aaRatios), slices.Max(aaRatios))
	}
	var spreads []string
	for _, m := range ms {
		if m.rounds > 1 && m.startKB > 0 {
			spreads = append(spreads, fmt.Sprintf("%s %.1f MB", m.name, mb(m.startSpreadKB)))
		}
	}
	if len(spreads) > 0 {
		fmt.Fprintf(b, "RSS at start, range of the rounds: %s.\n\n", strings.Join(spreads, ", "))
	}
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
