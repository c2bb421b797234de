package main

import (
	"fmt"
	"slices"
	"strings"
)

// shardTarget is one acceptance target of the sharded table: on every row
// of workload, num's TPS ≥ limit × den's (or, with latency, num's mean
// latency ≤ limit × den's).
type shardTarget struct {
	workload string
	text     string // the target in words
	num, den string // columns compared
	limit    float64
	latency  bool
}

var shardTargets = []shardTarget{
	{workload: wlTeamTx, text: "single-team transaction on two shards ≥ 0.90 × the one-shard sidecar's TPS", num: colSidecar2, den: colSidecar1, limit: 0.90},
	{workload: wlSignup, text: "signup on two shards (two-phase commit) ≥ 0.50 × the one database's TPS", num: colSidecar2, den: colDirect, limit: 0.50},
	{workload: wlFanout, text: "fan-out ORDER BY … LIMIT 50 mean latency on two shards ≤ 1.30 × the one database's", num: colSidecar2, den: colDirect, limit: 1.30, latency: true},
}

// shardVerdict is the outcome of one shardTarget.
type shardVerdict struct {
	target  shardTarget
	judged  int      // rows of the workload with both columns
	met     int      // of them, rows where the target holds
	details []string // per row: "10 clients: 0.97 (4321 vs 4455 TPS)"
}

func (v shardVerdict) ok() bool { return v.judged > 0 && v.met == v.judged }

// evalShardTarget judges st on every row of its workload. A row where
// either side failed (an error or a wrong answer in any run) or has no
// result is not met.
func (t *table) evalShardTarget(st shardTarget) shardVerdict {
	v := shardVerdict{target: st}
	ni, di := t.col(st.num), t.col(st.den)
	if ni < 0 || di < 0 {
		return v
	}
	for _, r := range t.rows {
		if r.proto != st.workload {
			continue
		}
		v.judged++
		num, den := r.res[ni], r.res[di]
		prefix := fmt.Sprintf("%d client", r.clients)
		if r.clients != 1 {
			prefix += "s"
		}
		var failed []string
		for _, side := range []struct {
			name string
			res  result
		}{{st.num, num}, {st.den, den}} {
			if side.res.failed() || !side.res.parsed {
				failed = append(failed, side.name)
			}
		}
		if len(failed) > 0 {
			v.details = append(v.details, fmt.Sprintf("%s: %s failed (see Errors)", prefix, strings.Join(failed, " and ")))
			continue
		}
		if st.latency {
			if den.latencyMs <= 0 {
				v.details = append(v.details, prefix+": n/a")
				continue
			}
			q := num.latencyMs / den.latencyMs
			if q <= st.limit {
				v.met++
			}
			v.details = append(v.details, fmt.Sprintf("%s: %.3f (%.3f vs %.3f ms)", prefix, q, num.latencyMs, den.latencyMs))
			continue
		}
		if den.tps <= 0 {
			v.details = append(v.details, prefix+": n/a")
			continue
		}
		q := num.tps / den.tps
		if q >= st.limit {
			v.met++
		}
		v.details = append(v.details, fmt.Sprintf("%s: %.3f (%.0f vs %.0f TPS)", prefix, q, num.tps, den.tps))
	}
	return v
}

// latencyRatio formats a.latencyMs/b.latencyMs; "n/a" when either has no
// result.
func latencyRatio(a, b result) string {
	if !a.parsed || !b.parsed || b.latencyMs <= 0 || a.latencyMs <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a.latencyMs/b.latencyMs)
}

// shardCPUCell is "sidecar + PostgreSQL" CPU µs per transaction, or
// PostgreSQL's alone when no pooler was measured; "–" when neither was.
func shardCPUCell(r result) string {
	switch {
	case r.cpuUs > 0 && r.pgCPUUs > 0:
		return fmt.Sprintf("%.0f + %.0f", r.cpuUs, r.pgCPUUs)
	case r.cpuUs > 0:
		return fmt.Sprintf("%.0f + –", r.cpuUs)
	case r.pgCPUUs > 0:
		return fmt.Sprintf("%.0f", r.pgCPUUs)
	}
	return "–"
}

// latencyTriple is "mean / p50 / p95" in milliseconds.
func latencyTriple(r result) string {
	if !r.parsed {
		return "ERR"
	}
	return fmt.Sprintf("%.3f / %.3f / %.3f%s", r.latencyMs, r.p50Ms, r.p95Ms, mark(r))
}

// writeShardedTable renders the sharded table: what ran where, the
// measurements, and the three targets.
func (r *report) writeShardedTable(b *strings.Builder, t *table) {
	fmt.Fprintf(b, "## Sharded: one database, the sidecar on one shard and on two (transaction mode, pool %d per shard)\n\n", t.poolSize)
	fmt.Fprintf(b, "Targets: **%s** = the one database over TLS (verify-full) with the client certificate; it holds every row. **%s** = the sidecar with a shard map of one shard, that same database. **%s** = the sidecar on two more PostgreSQL clusters, each the primary of one shard. Both maps are deploy/shardmap/brownie.yaml with the benchmark's shards and no replicas (`shardmap-1.yaml`, `shardmap-2.yaml` in the work directory); sidecars `POOL_MODE=transaction POOL_SIZE=%d`.",
		colDirect, colSidecar1, colSidecar2, t.poolSize)
	if s := t.sharded; s != nil {
		var kv []string
		for k, v := range s.settings {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		fmt.Fprintf(b, " The three clusters share this machine and its settings (`%s`, with internal/pgcluster's fsync=off).", strings.Join(kv, " "))
	}
	b.WriteString(" Clients: this program's own (internal/bench/workload.go), pgx with one connection each, extended protocol with the unnamed statement (one round trip per statement, as `pgbench -M extended`), new ids made by the client as the Brownie API makes them. Every answer is checked (row counts, command tags, the fan-out read's rows and order); a client stops at its first error or wrong answer, which fails the run.\n\n")

	if s := t.sharded; s != nil {
		fmt.Fprintf(b, "Data, loaded straight into each cluster as the superuser: %s incidents of one organization over %d teams for the fan-out read; for each target, an organization of %d teams with %d incidents each and one user for its single-team transactions. Organizations and users are on every cluster (replicated); a team and its incidents on the one database and on the shard the sidecar's router places the team on",
			thousands(s.incidents), s.teams, s.teams, requestIncidentsPerTeam)
		var parts []string
		for _, sh := range s.shards {
			parts = append(parts, fmt.Sprintf("%s holds %d fan-out teams (%s incidents) and %d of %s's teams", sh.name, sh.counts.fanTeams, thousands(sh.counts.fanIncidents), sh.counts.requestTeams[colSidecar2], colSidecar2))
		}
		if len(parts) > 0 {
			b.WriteString(": " + strings.Join(parts, "; "))
		}
		b.WriteString(".\n\n")
		if len(s.plans) > 0 {
			var plans []string
			for _, p := range s.plans {
				plans = append(plans, fmt.Sprintf("%s: %s", p.where, p.summary))
			}
			fmt.Fprintf(b, "The fan-out read's plan (EXPLAIN ANALYZE on each cluster, before the runs; `sharded/plans.txt`): %s.\n\n", strings.Join(plans, "; "))
		}
	}

	b.WriteString("Workloads (rows):\n\n")
	for _, wl := range []string{wlFanout, wlTeamTx, wlSignup} {
		fmt.Fprintf(b, "- **%s**: %s\n", wl, workloadText[wl])
	}
	b.WriteString("\n")
	if t.loadBefore >= 0 && t.loadAfter >= 0 && len(t.rows) > 0 {
		// Not judged against the CPU count as in the other tables: the
		// loading just before and the table's own clients (ten fan-out
		// reads at once keep ten backends runnable) raise it themselves.
		fmt.Fprintf(b, "1-minute load average %.2f before the table (just after loading), %.2f after; both include this table's own work.\n\n", t.loadBefore, t.loadAfter)
	}

	di, s1, s2 := t.col(colDirect), t.col(colSidecar1), t.col(colSidecar2)
	head := []string{"workload", "clients"}
	for _, name := range t.targets {
		head = append(head, name+" TPS")
	}
	for _, name := range t.targets {
		head = append(head, name+" lat ms mean / p50 / p95")
	}
	var cpuCols []int
	for i, name := range t.targets {
		if slices.ContainsFunc(t.rows, func(r row) bool { return i < len(r.res) && (r.res[i].cpuUs > 0 || r.res[i].pgCPUUs > 0) }) {
			cpuCols = append(cpuCols, i)
			head = append(head, name+" CPU µs/tx")
		}
	}
	type ratioCol struct {
		a, b    int
		latency bool
	}
	var ratios []ratioCol
	addRatio := func(a, b int, latency bool, name string) {
		if a >= 0 && b >= 0 {
			ratios = append(ratios, ratioCol{a, b, latency})
			head = append(head, name)
		}
	}
	addRatio(s1, di, false, colSidecar1+"/"+colDirect+" TPS")
	addRatio(s2, s1, false, colSidecar2+"/"+colSidecar1+" TPS")
	addRatio(s2, di, false, colSidecar2+"/"+colDirect+" TPS")
	addRatio(s2, di, true, colSidecar2+"/"+colDirect+" latency")
	fmt.Fprintf(b, "| %s |\n|---|%s\n", strings.Join(head, " | "), strings.Repeat("---:|", len(head)-1))
	for _, row := range t.rows {
		cells := []string{row.proto, fmt.Sprint(row.clients)}
		for _, res := range row.res {
			cells = append(cells, tpsCell(res))
		}
		for _, res := range row.res {
			cells = append(cells, latencyTriple(res))
		}
		for _, i := range cpuCols {
			cells = append(cells, shardCPUCell(row.res[i]))
		}
		for _, rc := range ratios {
			if rc.latency {
				cells = append(cells, latencyRatio(row.res[rc.a], row.res[rc.b]))
				continue
			}
			vs, _ := ratio(row.res[rc.a], row.res[rc.b])
			cells = append(cells, vs)
		}
		fmt.Fprintf(b, "| %s |\n", strings.Join(cells, " | "))
	}
	b.WriteString("\n`*` = the run had errors or wrong answers (see below); `ERR` = no result.")
	if len(cpuCols) > 0 {
		b.WriteString(" CPU µs/tx = CPU time (user + system, from /proc) during the run per transaction completed: the sidecar's + PostgreSQL's (every process of the clusters behind the target: the one database, or both shards); PostgreSQL's alone for direct. The clients' own CPU is not counted; everything shares the same CPUs, so on a machine whose CPUs are all busy, TPS follows the sum.")
	}
	b.WriteString("\n\n")
	if len(t.rows) == 0 {
		return
	}
	b.WriteString("Targets:\n\n")
	for _, st := range shardTargets {
		v := t.evalShardTarget(st)
		if v.judged == 0 {
			fmt.Fprintf(b, "- %s: not judged (no %s row with both targets).\n", st.text, st.workload)
			continue
		}
		fmt.Fprintf(b, "- %s: **%s** (%s).\n", st.text, verdict(v.ok()), strings.Join(v.details, "; "))
	}
	b.WriteString("\n")
	if t.sharded != nil {
		t.writeTwin(b)
	}
}

// writeTwin renders the signup's floor (twin.go) beside the table's
// signup rows.
func (t *table) writeTwin(b *strings.Builder) {
	if len(t.sharded.twin) == 0 {
		return
	}
	fmt.Fprintf(b, "The signup's floor on two shards (**%s**, internal/bench/twin.go): this program's client runs the signup on both shard primaries itself, with no sidecar — the organization and the user on both, the team on its shard, the two-phase commit with the decision row — in fewer round trips than the sidecar (each shard's BEGIN and first insert in one pipeline, both shards at once). No sidecar can run this protocol faster on these clusters.\n\n", colTwin2)
	di, s2 := t.col(colDirect), t.col(colSidecar2)
	for _, tw := range t.sharded.twin {
		fl := tw.res[0]
		line := fmt.Sprintf("- %d clients: ", tw.clients)
		if fl.failed() || !fl.parsed {
			b.WriteString(line + "failed (see its logs in the work directory).\n")
			continue
		}
		line += fmt.Sprintf("%.0f TPS, mean latency %.3f ms, PostgreSQL CPU %s µs per signup", fl.tps, fl.latencyMs, shardCPUCell(fl))
		for _, r := range t.rows {
			if r.proto != wlSignup || r.clients != tw.clients || di < 0 {
				continue
			}
			if q, ok := ratio(fl, r.res[di]); ok {
				line += fmt.Sprintf("; %s of the one database's TPS (whose PostgreSQL CPU is %s µs)", q, shardCPUCell(r.res[di]))
				if fl.tps < 0.5*r.res[di].tps {
					line += ", below the 0.50 target with no sidecar at all"
				}
			}
			if s2 >= 0 {
				if q, ok := ratio(r.res[s2], fl); ok {
					line += fmt.Sprintf("; the sidecar on two shards reaches %s of this floor", q)
				}
			}
		}
		b.WriteString(line + ".\n")
	}
	b.WriteString("\n")
}

// thousands formats n with commas: 100000 → "100,000".
func thousands(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
