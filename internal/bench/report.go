package main

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Column names of the targets.
const (
	colDirect  = "direct"
	colBouncer = "pgbouncer"
	// colBouncerAA is the second, identical PgBouncer of -reference.
	colBouncerAA = "pgbouncer-aa"
	colSidecar   = "sidecar"
	// colSidecarB is the second sidecar build of -sidecar-b.
	colSidecarB = "sidecar-b"
)

// rssTargetMB is the acceptance target for rssTargetClients idle clients.
const (
	rssTargetMB      = 100
	rssTargetClients = 2000
)

// table is the measurements of one pool mode: PgBouncer and the sidecar
// (and, in session mode, PostgreSQL directly) for every row; or, for
// modeSharded, one database, the sidecar on one shard and on two for every
// workload.
type table struct {
	mode         string   // modeSession, modeTransaction or modeSharded
	poolSize     int      // upstream connections of either pooler (per shard)
	targets      []string // column names, in the order rows hold results
	rows         []row
	warmupErrors []runError
	sidecarLogs  []namedLog // the table's sidecars' output
	loadBefore   float64    // 1-minute load average before and after the table
	loadAfter    float64
	sharded      *shardedInfo // modeSharded only: what the clusters held
}

// namedLog is one sidecar's output, named after its column.
type namedLog struct {
	name string
	log  sidecarLog
}

// row is one (protocol, clients) line of a table — (workload, clients) in
// the sharded table; res is indexed like the table's targets.
type row struct {
	proto   string
	clients int
	res     []result
	// unsupported is, per target, whether the target is known not to
	// support the row (PgBouncer in transaction mode with -M prepared).
	// The run happens anyway; its failure with a prepared-statement error
	// is the expected outcome and not an error of the benchmark.
	unsupported []bool
}

// expectedFailure reports whether target i failed the way it is known to:
// an unsupported row whose pgbench printed a prepared-statement error.
func (r row) expectedFailure(i int) bool {
	return i < len(r.unsupported) && r.unsupported[i] && r.res[i].failed() && r.res[i].preparedError() != ""
}

// realFailure reports whether target i failed in a way that makes the
// benchmark fail.
func (r row) realFailure(i int) bool {
	return r.res[i].failed() && !r.expectedFailure(i)
}

func (r row) name() string { return fmt.Sprintf("%s/%d", r.proto, r.clients) }

// col returns the index of the named target, or -1.
func (t *table) col(name string) int { return slices.Index(t.targets, name) }

// runError is a failed run outside the table (the warm-up).
type runError struct {
	target, proto string
	clients       int
	res           result
}

// report is everything measured in one run.
type report struct {
	started     time.Time
	duration    time.Duration
	scale, cpus int
	repeat      int // runs per cell; 0 counts as 1
	versions    []string
	tables      []*table // in allModes order
	skipRSS     bool
	rss         *rssResult
	memory      []memTarget       // cost per pod (memory.go)
	sidecarEnv  map[string]string // extra sidecar environment, if any
	// cpuProfile is set when the session and transaction tables' sidecars
	// were CPU-profiled during every run (-cpu-profile).
	cpuProfile bool
	// rate is the pgbench -R of the session and transaction tables (0:
	// unlimited).
	rate int
}

// hasPgbenchTables reports whether the report has a session or
// transaction table.
func (r *report) hasPgbenchTables() bool {
	return slices.ContainsFunc(r.tables, func(t *table) bool { return t.mode != modeSharded })
}

// refRelays lists the Go reference relays that some table ran.
func (r *report) refRelays() []string {
	var ran []string
	for _, kind := range append(refKinds[:len(refKinds):len(refKinds)], refTxLoop) {
		if slices.ContainsFunc(r.tables, func(t *table) bool { return slices.Contains(t.targets, kind) }) {
			ran = append(ran, kind)
		}
	}
	return ran
}

// hasRows reports whether any table has a measured row.
func (r *report) hasRows() bool {
	for _, t := range r.tables {
		if len(t.rows) > 0 {
			return true
		}
	}
	return false
}

// hasErrors reports whether any measurement failed or is incomplete. The
// expected failures of unsupported rows do not count.
func (r *report) hasErrors() bool {
	if r == nil {
		return false
	}
	for _, t := range r.tables {
		if len(t.warmupErrors) > 0 {
			return true
		}
		for _, row := range t.rows {
			for i := range row.res {
				if row.realFailure(i) {
					return true
				}
			}
		}
	}
	return r.rss != nil && (r.rss.opened < r.rss.wanted || len(r.rss.errors) > 0)
}

// The cost-per-pod targets against PgBouncer in the same run: TPS of
// every row both can run at least tpsTarget of PgBouncer's (new
// connections, the connect row, at least connectTarget), and CPU per
// transaction at most cpuTarget times PgBouncer's.
const (
	tpsTarget     = 0.95
	connectTarget = 1.0
	cpuTarget     = 1.15
)

// bouncerEval is the verdict on "sidecar TPS ≥ tpsTarget × PgBouncer TPS
// (connectTarget for new connections) in every row both can run".
type bouncerEval struct {
	met, judged int
	below       []string // rows where it is not met: "proto/clients (ratio)"
	skipped     []string // rows PgBouncer cannot run (expected failures)
	// twin lists the rows of below where the second PgBouncer (-reference)
	// misses the same target against the first, with its own ratio: rows
	// whose verdict is within what noise alone does to two equal poolers.
	twin []string
}

// writeBelow appends the rows where the target is not met, and those of
// them where the second PgBouncer misses it too.
func (e bouncerEval) writeBelow(b *strings.Builder) {
	if len(e.below) == 0 {
		return
	}
	fmt.Fprintf(b, "; not met in %s", strings.Join(e.below, ", "))
	if len(e.twin) > 0 {
		fmt.Fprintf(b, "; of these, the second PgBouncer, configured like the first, misses it too against the first in %s", strings.Join(e.twin, ", "))
	}
}

func (e bouncerEval) ok() bool { return e.judged > 0 && e.met == e.judged }

// evalVsBouncer judges every row except those PgBouncer failed the way it
// is known to. A row with no result or a failed run on either side is not
// met.
func (t *table) evalVsBouncer() bouncerEval {
	var e bouncerEval
	bi, si, ai := t.col(colBouncer), t.col(colSidecar), t.col(colBouncerAA)
	if bi < 0 || si < 0 {
		return e
	}
	for _, row := range t.rows {
		if row.expectedFailure(bi) {
			e.skipped = append(e.skipped, row.name())
			continue
		}
		e.judged++
		need := tpsTarget
		if row.proto == protoConnect {
			need = connectTarget
		}
		side, bouncer := row.res[si], row.res[bi]
		vs, ok := ratio(side, bouncer)
		if ok && side.tps >= need*bouncer.tps && !side.failed() && !bouncer.failed() {
			e.met++
			continue
		}
		e.below = append(e.below, fmt.Sprintf("%s (%s%s)", row.name(), vs, machineNote(side, bouncer)))
		if ai < 0 || bouncer.failed() {
			continue
		}
		twin := row.res[ai]
		if tv, ok := ratio(twin, bouncer); ok && !twin.failed() && twin.tps < need*bouncer.tps {
			e.twin = append(e.twin, fmt.Sprintf("%s (%s)", row.name(), tv))
		}
	}
	return e
}

// machineNote splits a TPS ratio into its two factors when both runs
// measured the whole machine's work (writeMachineCPU): TPS is the busy
// share times the CPUs over the CPU per transaction of pooler, PostgreSQL
// and pgbench together, so a row is below PgBouncer because the machine
// did more work per transaction, was kept less busy, or both. Empty when
// either was not measured (a busy share is set only with all three CPUs).
func machineNote(side, bouncer result) string {
	if side.busy <= 0 || bouncer.busy <= 0 {
		return ""
	}
	return fmt.Sprintf(": the whole machine's CPU per transaction %.2f×, its busy share %.2f×", side.machineUs()/bouncer.machineUs(), side.busy/bouncer.busy)
}

// evalCPU judges "sidecar CPU per transaction ≤ cpuTarget × PgBouncer's"
// over the simple, extended and prepared rows where both were measured.
// New connections (the connect row) are judged by their rate alone; their
// CPU ratio is reported beside the verdict (connectCPU).
func (t *table) evalCPU() bouncerEval {
	var e bouncerEval
	bi, si, ai := t.col(colBouncer), t.col(colSidecar), t.col(colBouncerAA)
	if bi < 0 || si < 0 {
		return e
	}
	for _, row := range t.rows {
		side, bouncer := row.res[si], row.res[bi]
		if !bothCPU(side, bouncer) || row.proto == protoConnect {
			continue
		}
		e.judged++
		if side.cpuUs <= cpuTarget*bouncer.cpuUs {
			e.met++
			continue
		}
		e.below = append(e.below, fmt.Sprintf("%s (%.2f)", row.name(), side.cpuUs/bouncer.cpuUs))
		if ai >= 0 && bothCPU(row.res[ai], bouncer) && row.res[ai].cpuUs > cpuTarget*bouncer.cpuUs {
			e.twin = append(e.twin, fmt.Sprintf("%s (%.2f)", row.name(), row.res[ai].cpuUs/bouncer.cpuUs))
		}
	}
	return e
}

// writeCPUVerdict appends the CPU target's verdict, when any row measured
// both poolers' CPU.
func (t *table) writeCPUVerdict(b *strings.Builder) {
	vc := t.evalCPU()
	if vc.judged == 0 {
		return
	}
	fmt.Fprintf(b, "Target sidecar CPU per transaction ≤ %.2f× PgBouncer's (simple, extended and prepared rows): **%s** (%d of %d rows", cpuTarget, verdict(vc.ok()), vc.met, vc.judged)
	vc.writeBelow(b)
	b.WriteString(").")
	if cs := t.connectCPU(); len(cs) > 0 {
		b.WriteString(" New connections are judged by their rate;")
		for i, c := range cs {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(b, " %s cost the sidecar %.2f×", c.name, c.ratio)
		}
		b.WriteString(" PgBouncer's CPU per connection.")
	}
	b.WriteString("\n\n")
}

// bothCPU reports whether a row's sidecar and PgBouncer results both
// measured CPU, in runs that did not fail.
func bothCPU(side, bouncer result) bool {
	return side.cpuUs > 0 && bouncer.cpuUs > 0 && !side.failed() && !bouncer.failed()
}

// rowRatio is one row's sidecar/PgBouncer ratio of some figure.
type rowRatio struct {
	name  string
	ratio float64
}

// connectCPU is the sidecar's CPU per new connection over PgBouncer's, for
// every connect row where both were measured.
func (t *table) connectCPU() []rowRatio {
	bi, si := t.col(colBouncer), t.col(colSidecar)
	if bi < 0 || si < 0 {
		return nil
	}
	var out []rowRatio
	for _, row := range t.rows {
		side, bouncer := row.res[si], row.res[bi]
		if row.proto != protoConnect || !bothCPU(side, bouncer) {
			continue
		}
		out = append(out, rowRatio{row.name(), side.cpuUs / bouncer.cpuUs})
	}
	return out
}

// preparedEval is the verdict on "prepared-mode TPS through the sidecar ≥
// its own extended-mode TPS", over every client count that has both rows.
type preparedEval struct {
	met, judged int
	pairs       []string // "50 clients: 12000 vs 11000 (1.09)"
}

func (e preparedEval) ok() bool { return e.judged > 0 && e.met == e.judged }

func (t *table) evalPreparedVsExtended() preparedEval {
	var e preparedEval
	si := t.col(colSidecar)
	if si < 0 {
		return e
	}
	for _, prep := range t.rows {
		if prep.proto != "prepared" {
			continue
		}
		i := slices.IndexFunc(t.rows, func(r row) bool { return r.proto == "extended" && r.clients == prep.clients })
		if i < 0 {
			continue
		}
		p, x := prep.res[si], t.rows[i].res[si]
		e.judged++
		vs, ok := ratio(p, x)
		if ok && p.tps >= x.tps && !p.failed() && !x.failed() {
			e.met++
		}
		e.pairs = append(e.pairs, fmt.Sprintf("%d clients: %s vs %s (%s)", prep.clients, tpsCell(p), tpsCell(x), vs))
	}
	return e
}

// markdown renders the report: a header, one section per table with its
// verdicts, the RSS measurement, then every error verbatim.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Brownie sidecar benchmark\n\n")
	fmt.Fprintf(&b, "%s, %d CPUs.", r.started.Format("2006-01-02 15:04 MST"), r.cpus)
	if r.hasPgbenchTables() {
		fmt.Fprintf(&b, " `pgbench -S -T %d -n`, scale %d, `-j min(clients,2)`.", int(r.duration/time.Second), r.scale)
	} else {
		fmt.Fprintf(&b, " Runs of %d s.", int(r.duration/time.Second))
	}
	if r.repeat > 1 {
		fmt.Fprintf(&b, " Every cell is the median of %d runs (TPS and latency each on its own), the targets of a row taking turns run by run; ±x%% is half the range of the runs' TPS relative to the median.", r.repeat)
	}
	b.WriteString(" The poolers hold the client certificate upstream (TLS, verify-full) and take plaintext loopback clients.\n\n")
	if len(r.versions) > 0 {
		fmt.Fprintf(&b, "Versions: %s.\n\n", strings.Join(r.versions, "; "))
	}
	if len(r.sidecarEnv) > 0 {
		var kv []string
		for k, v := range r.sidecarEnv {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		fmt.Fprintf(&b, "Sidecar environment added: `%s`.\n\n", strings.Join(kv, " "))
	}
	if ran := r.refRelays(); len(ran) > 0 {
		procs := refRelayProcs(r.sidecarEnv)
		whose := "the sidecar's thread count"
		if _, fixed := r.sidecarEnv["GOMAXPROCS"]; !fixed {
			whose = "the thread count the sidecar starts with (it adds threads while its goroutines wait for one)"
		}
		fmt.Fprintf(&b, "The Go reference relays (%s) ran with `GOMAXPROCS=%s`, %s.\n\n", strings.Join(ran, ", "), procs, whose)
	}
	if r.rate > 0 {
		fmt.Fprintf(&b, "Rate-limited (-rate): every pgbench run of the session and transaction tables asks for %d transactions per second over all its clients (`pgbench -R`), so every target does the same work and CPU per transaction compares its cost; TPS only says whether a target kept up, and latency includes pgbench's schedule lag.\n\n", r.rate)
	}
	if r.cpuProfile {
		b.WriteString("The sidecars of the session and transaction tables ran with `ADMIN_PPROF=true` and were CPU-profiled during every run (-cpu-profile): their TPS and CPU figures include the profiler's cost.\n\n")
	}
	for _, t := range r.tables {
		if t.mode == modeSharded {
			r.writeShardedTable(&b, t)
			continue
		}
		r.writeTable(&b, t)
	}
	r.writeRSS(&b)
	if !r.skipRSS {
		writeMemory(&b, r.memory)
	}
	r.writeErrors(&b)
	return b.String()
}

// writeTable renders one table with its load averages, footnotes and
// target verdicts.
func (r *report) writeTable(b *strings.Builder, t *table) {
	mode := strings.ToUpper(t.mode[:1]) + t.mode[1:]
	fmt.Fprintf(b, "## %s mode (pool %d)\n\n", mode, t.poolSize)
	fmt.Fprintf(b, "PgBouncer `pool_mode = %s`, `default_pool_size = %d`; sidecar `POOL_MODE=%s POOL_SIZE=%d`.", t.mode, t.poolSize, t.mode, t.poolSize)
	if t.col(colDirect) >= 0 {
		b.WriteString(" Direct = PostgreSQL over TLS (verify-full) with the client certificate.")
	}
	if t.mode == modeTransaction {
		b.WriteString(" Fixed rows, whatever -clients and -protocols say.")
	}
	b.WriteString("\n\n")
	if t.loadBefore >= 0 && t.loadAfter >= 0 && len(t.rows) > 0 {
		fmt.Fprintf(b, "1-minute load average %.2f before the table, %.2f after.", t.loadBefore, t.loadAfter)
		if max(t.loadBefore, t.loadAfter) > float64(r.cpus) {
			fmt.Fprintf(b, " **Other work competed for the %d CPUs during the run; treat the numbers as noisy.**", r.cpus)
		}
		b.WriteString("\n\n")
	}

	di, bi, si := t.col(colDirect), t.col(colBouncer), t.col(colSidecar)
	head := []string{"protocol", "clients"}
	for _, name := range t.targets {
		head = append(head, name+" TPS")
	}
	for _, name := range t.targets {
		head = append(head, name+" lat ms")
	}
	cpuCols := t.columnsWith(func(r result) bool { return r.cpuUs > 0 })
	for _, i := range cpuCols {
		head = append(head, t.targets[i]+" CPU µs/tx")
	}
	// Every pooler or relay is set against PgBouncer: the sidecar, and any
	// reference relay (-reference) to show what Go itself reaches.
	var vsBouncer []int
	if bi >= 0 {
		for i, name := range t.targets {
			if i != bi && i != di {
				vsBouncer = append(vsBouncer, i)
				head = append(head, name+"/pgbouncer")
			}
		}
	}
	if di >= 0 && si >= 0 {
		head = append(head, "sidecar/direct")
	}
	fmt.Fprintf(b, "| %s |\n|---|%s\n", strings.Join(head, " | "), strings.Repeat("---:|", len(head)-1))
	var expected, unexpectedOK []string
	for _, row := range t.rows {
		cells := []string{row.proto, fmt.Sprint(row.clients)}
		var lat []string
		for i, res := range row.res {
			if row.expectedFailure(i) {
				cells, lat = append(cells, "failed†"), append(lat, "failed†")
				expected = append(expected, expectedNote(t.targets[i], row, res))
				continue
			}
			if i < len(row.unsupported) && row.unsupported[i] && !res.failed() {
				unexpectedOK = append(unexpectedOK, fmt.Sprintf("%s ran %s without errors", t.targets[i], row.name()))
			}
			cells, lat = append(cells, tpsCell(res)), append(lat, latencyCell(res))
		}
		cells = append(cells, lat...)
		for _, i := range cpuCols {
			cells = append(cells, cpuCell(row.res[i]))
		}
		for _, i := range vsBouncer {
			vs, _ := ratio(row.res[i], row.res[bi])
			if row.expectedFailure(bi) {
				vs = "n/a"
			}
			cells = append(cells, vs)
		}
		if di >= 0 && si >= 0 {
			vs, _ := ratio(row.res[si], row.res[di])
			cells = append(cells, vs)
		}
		fmt.Fprintf(b, "| %s |\n", strings.Join(cells, " | "))
	}
	b.WriteString("\n`*` = the run reported errors (see below); `ERR` = no result.")
	if len(cpuCols) > 0 {
		b.WriteString(" CPU µs/tx = the pooler's CPU time (user + system, every thread, from /proc/PID/stat) during the run per transaction pgbench processed: on a machine whose CPUs are all busy, TPS follows it.")
	}
	b.WriteString("\n\n")
	t.writeSwitches(b)
	t.writeSyscalls(b)
	t.writeCPUSplit(b)
	t.writeMachineCPU(b)
	for _, note := range expected {
		b.WriteString(note)
	}
	if len(unexpectedOK) > 0 {
		fmt.Fprintf(b, "Unexpected: %s, which PgBouncer 1.18 in transaction mode is not expected to manage; the row is judged like the others.\n\n", strings.Join(unexpectedOK, "; "))
	}
	if len(t.rows) == 0 {
		return
	}
	b.WriteString(t.controlNote())

	vb := t.evalVsBouncer()
	defer t.writeCPUVerdict(b)
	if t.mode == modeSession {
		fmt.Fprintf(b, "Target sidecar TPS ≥ %.2f× PgBouncer TPS in every row: **%s** (%d of %d rows)", tpsTarget, verdict(vb.ok()), vb.met, vb.judged)
		vb.writeBelow(b)
		b.WriteString(".\n\n")
		return
	}
	fmt.Fprintf(b, "Targets: sidecar TPS ≥ %.2f× PgBouncer TPS in every row both can run, new connections (%s rows, `pgbench -C`) ≥ %.2f×: **%s** (%d of %d rows", tpsTarget, protoConnect, connectTarget, verdict(vb.ok()), vb.met, vb.judged)
	vb.writeBelow(b)
	if len(vb.skipped) > 0 {
		fmt.Fprintf(b, "; PgBouncer cannot run %s", strings.Join(vb.skipped, ", "))
	}
	b.WriteString(")")
	vp := t.evalPreparedVsExtended()
	if vp.judged == 0 {
		b.WriteString("; sidecar prepared TPS ≥ its extended TPS: not judged (no prepared and extended rows at the same client count).\n\n")
		return
	}
	fmt.Fprintf(b, "; sidecar prepared TPS ≥ its extended TPS: **%s** (%s).\n\n", verdict(vp.ok()), strings.Join(vp.pairs, "; "))
}

// expectedNote is the footnote of an expected failure: what pgbench
// printed on stderr, the most frequent messages first (verbatim but for the
// client numbers), and its last line, which says how the run ended.
func expectedNote(target string, row row, res result) string {
	runs := ""
	if res.runs > 1 {
		runs = fmt.Sprintf(" %d of %d runs failed; the first is shown.", res.failedRuns, res.runs)
	}
	lines := collapseLines(res.stderr, 4)
	if n := len(res.stderr); n > 0 && !slices.ContainsFunc(lines, func(l string) bool { return strings.HasSuffix(l, "× "+foldClient(res.stderr[n-1])) }) {
		lines = append(lines, "last line: "+res.stderr[n-1])
	}
	if res.exitErr != nil {
		lines = append(lines, "pgbench "+res.exitErr.Error())
	}
	who := target // the Go transaction relay
	if strings.HasPrefix(target, "pgbouncer") {
		who = "PgBouncer 1.18"
	}
	return fmt.Sprintf("† %s, %s: failed as expected: %s has no protocol-level prepared statements in transaction mode, so a client's statement is missing on, or already exists on, whichever server connection serves its next transaction.%s pgbench printed (all of it in %s):\n\n```\n%s\n```\n\n",
		target, row.name(), who, runs, res.logPath, strings.Join(lines, "\n"))
}

var clientNumRE = regexp.MustCompile(`\bclient [0-9]+\b`)

func foldClient(line string) string { return clientNumRE.ReplaceAllString(line, "client N") }

// collapseLines counts lines that differ only in pgbench's client number
// ("client 7" becomes "client N") and returns them as "count× line", the
// most frequent first (ties in order of first appearance); at most
// maxLines of them, then how many more there are. pgbench's threads write
// to stderr at once, so some lines arrive spliced; they count apart.
func collapseLines(lines []string, maxLines int) []string {
	var order []string
	count := map[string]int{}
	for _, l := range lines {
		k := foldClient(l)
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	slices.SortStableFunc(order, func(a, b string) int { return count[b] - count[a] })
	var out []string
	for i, k := range order {
		if i == maxLines {
			rest := 0
			for _, k := range order[maxLines:] {
				rest += count[k]
			}
			out = append(out, fmt.Sprintf("... %d more distinct lines (%d lines)", len(order)-maxLines, rest))
			break
		}
		out = append(out, fmt.Sprintf("%d× %s", count[k], k))
	}
	return out
}

func (r *report) writeRSS(b *strings.Builder) {
	b.WriteString("## Idle-connection RSS\n\n")
	switch {
	case r.skipRSS:
		b.WriteString("Skipped (-skip-rss).\n")
		return
	case r.rss == nil:
		b.WriteString("Not measured (the run stopped earlier).\n")
		return
	}
	s := r.rss
	if s.hwmKB == 0 {
		fmt.Fprintf(b, "Not measured: %s\n", s.note)
		return
	}
	perConn := 0.0
	if s.opened > 0 {
		perConn = float64(s.hwmKB-s.baselineKB) / float64(s.opened)
	}
	fmt.Fprintf(b, "Idle clients: %d of %d sessions reached ReadyForQuery through a fresh sidecar (started from an executable dropped from the page cache; session mode, POOL_SIZE=%d, PostgreSQL max_connections=%d; PostgreSQL saw %d Brownie backends), opened %d at a time in %s.\n\n",
		s.opened, s.wanted, s.wanted+50, s.wanted+200, s.pgBackends, s.dialConcurrency, s.openTime.Round(time.Millisecond))
	fmt.Fprintf(b, "| sidecar peak RSS (VmHWM) | RSS now (VmRSS) | RSS before clients | per connection above baseline | threads |\n|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(b, "| %.1f MB | %.1f MB | %.1f MB | %.1f KB | %d |\n\n", mb(s.hwmKB), mb(s.rssKB), mb(s.baselineKB), perConn, s.threads)
	if s.wanted < rssTargetClients {
		fmt.Fprintf(b, "Target ≤ %d MB RSS for %d idle clients: not judged (only %d requested with -rss-clients)", rssTargetMB, rssTargetClients, s.wanted)
	} else {
		fmt.Fprintf(b, "Target ≤ %d MB RSS for %d idle clients: **%s**", rssTargetMB, rssTargetClients, verdict(s.opened >= rssTargetClients && mb(s.hwmKB) <= rssTargetMB))
	}
	if s.note != "" {
		fmt.Fprintf(b, " (%s)", s.note)
	}
	b.WriteString(".\n")
}

// writeErrors lists every failed run and session error verbatim, then
// whatever the sidecars logged.
func (r *report) writeErrors(b *strings.Builder) {
	section := func(title string, lines []string) string {
		return fmt.Sprintf("- %s:\n\n```\n%s\n```\n", title, strings.Join(lines, "\n"))
	}
	describe := func(res result) []string {
		var lines []string
		if res.exitErr != nil {
			lines = append(lines, "pgbench "+res.exitErr.Error())
		}
		if res.failedTx > 0 {
			lines = append(lines, fmt.Sprintf("number of failed transactions: %d", res.failedTx))
		}
		if !res.parsed {
			lines = append(lines, "(no TPS or latency measured)")
		} else if res.incomplete > 0 {
			lines = append(lines, fmt.Sprintf("(%d of %d runs without tps/latency lines in pgbench output)", res.incomplete, res.runs))
		}
		const maxLines = 30
		if len(res.stderr) > maxLines {
			lines = append(lines, res.stderr[:maxLines]...)
			lines = append(lines, fmt.Sprintf("... %d more lines in %s", len(res.stderr)-maxLines, res.logPath))
		} else {
			lines = append(lines, res.stderr...)
		}
		return lines
	}

	var errs []string
	expected := 0
	for _, t := range r.tables {
		for _, e := range t.warmupErrors {
			errs = append(errs, section(fmt.Sprintf("%s mode, warm-up, %s, %s, %d clients", t.mode, e.target, e.proto, e.clients), describe(e.res)))
		}
		for _, row := range t.rows {
			for i, res := range row.res {
				switch {
				case row.expectedFailure(i):
					expected++
				case res.failed():
					what := fmt.Sprintf("%s mode, %s, %s, %d clients", t.mode, t.targets[i], row.proto, row.clients)
					if res.runs > 1 {
						what += fmt.Sprintf(" (%d of %d runs failed; the first is shown)", res.failedRuns, res.runs)
					}
					errs = append(errs, section(what, describe(res)))
				}
			}
		}
	}
	if r.rss != nil && len(r.rss.errors) > 0 {
		errs = append(errs, section("idle sessions to the sidecar", r.rss.errors))
	}
	if len(errs) == 0 {
		var clean []string
		if r.hasPgbenchTables() {
			s := "every pgbench run exited 0 with nothing on stderr and no failed transactions"
			if expected > 0 {
				s += fmt.Sprintf(" (apart from the %d expected failure(s) marked †)", expected)
			}
			clean = append(clean, s)
		}
		if slices.ContainsFunc(r.tables, func(t *table) bool { return t.mode == modeSharded }) {
			clean = append(clean, "every transaction of the sharded table succeeded with the answers it must give")
		}
		text := strings.Join(clean, ", ")
		if r.rss != nil {
			if text != "" {
				text += ", and "
			}
			text += "every idle session reached ReadyForQuery"
		}
		b.WriteString("\nNo errors: " + text + ".\n")
	} else {
		b.WriteString("\n## Errors (verbatim)\n\n")
		b.WriteString(strings.Join(errs, "\n"))
	}

	var logs []string
	addLog := func(what string, l sidecarLog) {
		if len(l.byMsg) > 0 {
			var lines []string
			for msg, n := range l.byMsg {
				lines = append(lines, fmt.Sprintf("%d× %s", n, msg))
			}
			sort.Strings(lines)
			lines = append(lines, fmt.Sprintf("--- the last %d lines ---", len(l.lines)))
			lines = append(lines, l.lines...)
			logs = append(logs, section(fmt.Sprintf("%s, by message", what), lines))
		}
		if l.other > 0 {
			logs = append(logs, section(fmt.Sprintf("%s, output that is not a log line: %d lines, the first %d", what, l.other, len(l.otherSample)), l.otherSample))
		}
	}
	for _, t := range r.tables {
		for _, l := range t.sidecarLogs {
			addLog(fmt.Sprintf("%s, during the %s table", l.name, t.mode), l.log)
		}
	}
	if r.rss != nil {
		addLog("while the idle sessions opened and were measured", r.rss.logOpen)
		addLog(fmt.Sprintf("after the measurement, while all %d sessions closed at once (outside any measurement)", r.rss.opened), r.rss.logClose)
	}
	if len(logs) > 0 {
		b.WriteString("\n## Sidecar log (LOG_LEVEL=warn, verbatim)\n\n")
		b.WriteString(strings.Join(logs, "\n"))
	}
}

// tpsCell is TPS with, for a cell of several runs, their spread.
func tpsCell(r result) string {
	if !r.parsed {
		return "ERR"
	}
	if r.runs > 1 {
		return fmt.Sprintf("%.0f ±%.0f%%%s", r.tps, r.spread(), mark(r))
	}
	return fmt.Sprintf("%.0f%s", r.tps, mark(r))
}

func latencyCell(r result) string {
	if !r.parsed {
		return "ERR"
	}
	return fmt.Sprintf("%.3f%s", r.latencyMs, mark(r))
}

func mark(r result) string {
	if r.failed() {
		return "*"
	}
	return ""
}

// ratio formats a.tps/b.tps; ok is false when either has no result.
func ratio(a, b result) (string, bool) {
	if !a.parsed || !b.parsed || b.tps == 0 {
		return "n/a", false
	}
	return fmt.Sprintf("%.2f", a.tps/b.tps), true
}

// controlNote sums up the second PgBouncer (-reference) against the first:
// the band of ratios two equal poolers reach on this machine. Empty when
// the table has no such control.
func (t *table) controlNote() string {
	bi, ai := t.col(colBouncer), t.col(colBouncerAA)
	if bi < 0 || ai < 0 {
		return ""
	}
	var ratios []float64
	for _, row := range t.rows {
		a, b := row.res[ai], row.res[bi]
		if a.failed() || b.failed() || !a.parsed || !b.parsed || b.tps == 0 {
			continue
		}
		ratios = append(ratios, a.tps/b.tps)
	}
	if len(ratios) == 0 {
		return ""
	}
	below := 0
	for _, r := range ratios {
		if math.Round(r*100) < 100 { // as the table shows it: 0.995 is 1.00
			below++
		}
	}
	cpu := ""
	var cpuRatios []float64
	for _, row := range t.rows {
		a, b := row.res[ai], row.res[bi]
		if a.failed() || b.failed() || a.cpuUs <= 0 || b.cpuUs <= 0 {
			continue
		}
		cpuRatios = append(cpuRatios, a.cpuUs/b.cpuUs)
	}
	if len(cpuRatios) > 0 {
		cpu = fmt.Sprintf(", and %.2f–%.2f of its CPU per transaction", slices.Min(cpuRatios), slices.Max(cpuRatios))
	}
	return fmt.Sprintf("Control: a second PgBouncer configured like the first measured %.2f–%.2f of its TPS (%d of %d rows below 1.00)%s. Ratios within that band are this machine's noise, not a difference between poolers.\n\n",
		slices.Min(ratios), slices.Max(ratios), below, len(ratios), cpu)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

// columnsWith returns the targets for which some row's result satisfies
// measured, in table order.
func (t *table) columnsWith(measured func(result) bool) []int {
	var cols []int
	for i := range t.targets {
		if slices.ContainsFunc(t.rows, func(r row) bool { return i < len(r.res) && measured(r.res[i]) }) {
			cols = append(cols, i)
		}
	}
	return cols
}

// writeSwitches writes the context switches per transaction of the
// targets that measured them, row by row, or nothing when none did.
func (t *table) writeSwitches(b *strings.Builder) {
	t.writePerTarget(b, "Context switches per transaction, voluntary + involuntary (every thread of the pooler, from /proc/PID/task/*/status): a voluntary switch is a thread waiting (for the network, a lock, a timer), an involuntary one the kernel preempting it. Each costs the pooler CPU in the kernel beside its system calls.",
		func(r result) bool { return r.switched },
		func(r result) string { return fmt.Sprintf("%.2f + %.2f", r.volCS, r.involCS) })
}

// writeSyscalls writes the system calls per transaction of the targets
// that counted them, row by row, or nothing when none did.
func (t *table) writeSyscalls(b *strings.Builder) {
	t.writePerTarget(b, "System calls per transaction, reads (read, recvfrom) + writes (write, sendto) + epoll waits (epoll_wait, epoll_pwait) (every thread of the pooler, counted by perf's syscall tracepoints; for several runs, the median of each): PgBouncer receives with recv (recvfrom) and reads TLS with read; a Go relay's read that finds nothing (EAGAIN) counts as a read.",
		func(r result) bool { return r.sysCounted },
		func(r result) string { return fmt.Sprintf("%.2f + %.2f + %.2f", r.sysReads, r.sysWrites, r.sysWaits) })
}

// writeCPUSplit writes the CPU per transaction of the targets that
// measured it split into user and system time, row by row, or nothing when
// none did.
func (t *table) writeCPUSplit(b *strings.Builder) {
	t.writePerTarget(b, "CPU per transaction in µs, user + system (every thread of the pooler, from /proc/PID/stat; for several runs, the median of each): user time is the pooler's own code and its runtime, system time the kernel's work for it, its system calls first.",
		func(r result) bool { return r.userUs > 0 || r.sysUs > 0 },
		func(r result) string { return fmt.Sprintf("%.1f + %.1f", r.userUs, r.sysUs) })
}

// writeMachineCPU writes, row by row, the CPU per transaction of the
// whole machine's work behind each target that measured it all: the
// pooler's, PostgreSQL's and pgbench's, or nothing when none did. On a
// machine whose CPUs are all busy TPS follows the sum, so a pooler that
// costs the server or the client more per transaction than another shows
// it here, beside its own CPU.
func (t *table) writeMachineCPU(b *strings.Builder) {
	t.writePerTarget(b, "CPU per transaction of the whole machine's work in µs, pooler + PostgreSQL + pgbench = sum, and in brackets the share of the machine's CPU time the three used during the run (PostgreSQL: the postmaster and every child of it, from /proc; pgbench: its resource usage, every thread; for several runs, the median of each). TPS = share × CPUs ÷ sum: a pooler can cost the server or the client more per transaction as well as itself, and two runs of equal sums differ in TPS by how busy they kept the machine.",
		func(r result) bool { return r.pgCPUUs > 0 && r.clientUs > 0 },
		func(r result) string {
			pooler := "–" // PostgreSQL reached directly
			if r.cpuUs > 0 {
				pooler = fmt.Sprintf("%.1f", r.cpuUs)
			}
			cell := fmt.Sprintf("%s + %.1f + %.1f = %.1f", pooler, r.pgCPUUs, r.clientUs, r.machineUs())
			if r.busy > 0 {
				cell += fmt.Sprintf(" (%.0f %%)", 100*r.busy)
			}
			return cell
		})
}

// writePerTarget writes intro and a table of one cell per row and target,
// for the targets whose results measured something, or nothing when none
// did; a cell not measured, or of a row the target is expected to fail,
// is "–".
func (t *table) writePerTarget(b *strings.Builder, intro string, measured func(result) bool, cell func(result) string) {
	cols := t.columnsWith(measured)
	if len(cols) == 0 {
		return
	}
	head := []string{"protocol", "clients"}
	for _, i := range cols {
		head = append(head, t.targets[i])
	}
	b.WriteString(intro + "\n\n")
	fmt.Fprintf(b, "| %s |\n|---|%s\n", strings.Join(head, " | "), strings.Repeat("---:|", len(head)-1))
	for _, row := range t.rows {
		cells := []string{row.proto, fmt.Sprint(row.clients)}
		for _, i := range cols {
			if r := row.res[i]; measured(r) && !row.expectedFailure(i) {
				cells = append(cells, cell(r))
			} else {
				cells = append(cells, "–")
			}
		}
		fmt.Fprintf(b, "| %s |\n", strings.Join(cells, " | "))
	}
	b.WriteString("\n")
}

// cpuCell renders a CPU-per-transaction cell ("–" when not measured).
func cpuCell(r result) string {
	if r.cpuUs <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", r.cpuUs)
}
