package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/router"
)

// Column names of the sharded table's sidecars (the one database reached
// directly is colDirect).
const (
	colSidecar1 = "sidecar-1" // a shard map of one shard: the one database
	colSidecar2 = "sidecar-2" // two clusters, each a shard primary
)

// shardedTeams is how many teams each team set of the sharded table has.
const shardedTeams = 100

// shardCount is the number of shards of the sidecar-2 target.
const shardCount = 2

// shardedSettings are the PostgreSQL settings of the one database and of
// both shards while the sharded table runs: the same on all three, chosen
// so the one database reads as fast as it can.
//
//   - Shared buffers hold the one database's incidents whole: PostgreSQL
//     scans a table larger than a quarter of shared_buffers through a
//     small ring of buffers, so with internal/pgcluster's 32MB the one
//     database would copy its 100,000 incidents from the OS cache on every
//     fan-out read while each shard's half stayed in its buffers.
//   - No parallel query: the one database's plan for 100,000 incidents
//     takes a parallel worker, which made its fan-out read slower on this
//     machine (24 ms against 16 ms serial, alone), and slower still under
//     ten clients; each shard's half is too small for one anyway.
var shardedSettings = map[string]string{
	"max_connections":                 "300",
	"shared_buffers":                  "128MB",
	"max_parallel_workers_per_gather": "0",
}

// shardedInfo is what the sharded table's clusters held, for the report.
type shardedInfo struct {
	incidents int // fan-out incidents
	teams     int // teams per set
	settings  map[string]string
	shards    []shardLoad // sidecar-2's shards, in hash order
	plans     []planNote  // the fan-out read's plan on each cluster
	// twin holds the signup's floor (twin.go), one row per signup row of
	// the table, with the one result of colTwin2.
	twin []row
}

// shardLoad is what one shard of sidecar-2 was loaded with.
type shardLoad struct {
	name   string
	counts loadCounts
}

// planNote is the fan-out read's plan on one cluster.
type planNote struct {
	where, summary string
}

// shardedRows are the sharded table's rows: the fan-out read with one
// client (its latency alone) and with clients, then the transactions. The
// fan-out rows come first: the single-team transactions insert incidents,
// and the fan-out read must order the same 100,000 on every target.
func shardedRows(clients int) []rowSpec {
	rows := []rowSpec{{wlFanout, 1}}
	if clients > 1 {
		rows = append(rows, rowSpec{wlFanout, clients})
	}
	return append(rows, rowSpec{wlTeamTx, clients}, rowSpec{wlSignup, clients})
}

// runSharded runs the sharded table: it restarts the one database with
// shardedSettings, creates two more clusters as the shards, writes the
// one-shard and two-shard maps, loads the same rows into the one database
// and, by placement, into the shards, starts one sidecar per map in
// transaction mode, and runs every workload against the one database
// directly and through both sidecars. Shards and sidecars are stopped when
// it returns.
func (b *bench) runSharded(ctx context.Context, rep *report) error {
	tbl := &table{mode: modeSharded, poolSize: txnPoolSize, loadBefore: -1, loadAfter: -1}
	rep.tables = append(rep.tables, tbl)
	info := &shardedInfo{incidents: b.opts.fanoutIncidents, teams: shardedTeams, settings: shardedSettings}
	tbl.sharded = info

	if err := b.restartPostgres(ctx, shardedSettings); err != nil {
		return err
	}
	shards, err := b.startShards(ctx, shardCount, shardedSettings)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, c := range shards {
			if err := c.Stop(sctx); err != nil {
				b.logf("stop shard in %s: %v", c.Dir(), err)
			}
		}
	}()
	if err != nil {
		return err
	}

	addr := func(c *pgcluster.Cluster) string { return c.Host() + ":" + strconv.Itoa(c.Port()) }
	oneFile, _, err := b.writeShardMap("shardmap-1.yaml", []string{addr(b.pg)})
	if err != nil {
		return err
	}
	var primaries []string
	for _, c := range shards {
		primaries = append(primaries, addr(c))
	}
	twoFile, twoMap, err := b.writeShardMap("shardmap-2.yaml", primaries)
	if err != nil {
		return err
	}
	rt, err := router.New(twoMap)
	if err != nil {
		return err
	}

	names := []string{colDirect, colSidecar1, colSidecar2}
	d := newDataset(names, shardedTeams, b.opts.fanoutIncidents)
	place, err := placement(rt, d.allTeams())
	if err != nil {
		return err
	}
	if _, err := b.loadCluster(ctx, b.pg, "the one database", d, func(string) bool { return true }); err != nil {
		return err
	}
	for i, c := range shards {
		name := twoMap.Shards[i].Name
		counts, err := b.loadCluster(ctx, c, name, d, func(team string) bool { return place[team] == name })
		if err != nil {
			return err
		}
		info.shards = append(info.shards, shardLoad{name: name, counts: counts})
	}
	clusters := append([]*pgcluster.Cluster{b.pg}, shards...)
	for i, c := range clusters {
		where := "one database"
		if i > 0 {
			where = twoMap.Shards[i-1].Name
		}
		note, err := b.explainFanout(ctx, c, where, d)
		if err != nil {
			return err
		}
		info.plans = append(info.plans, note)
	}

	envs := map[string]*workloadEnv{}
	for _, n := range names {
		if envs[n], err = newWorkloadEnv(d, n); err != nil {
			return err
		}
	}
	sidecarEnv := func(mapFile string, port int) map[string]string {
		return map[string]string{
			"POOL_MODE": modeTransaction, "POOL_SIZE": strconv.Itoa(txnPoolSize), "MAX_CLIENT_CONN": "5000",
			"SHARD_MAP_FILE": mapFile, "DB_PORT": strconv.Itoa(port),
		}
	}
	side1, err := b.startSidecar(ctx, "sidecar-1shard", sidecarEnv(oneFile, b.pg.Port()))
	if err != nil {
		return err
	}
	defer func() {
		side1.stop()
		tbl.sidecarLogs = append(tbl.sidecarLogs, namedLog{name: colSidecar1, log: readSidecarLog(side1.proc.logPath, 0, -1)})
	}()
	side2, err := b.startSidecar(ctx, "sidecar-2shards", sidecarEnv(twoFile, shards[0].Port()))
	if err != nil {
		return err
	}
	defer func() {
		side2.stop()
		tbl.sidecarLogs = append(tbl.sidecarLogs, namedLog{name: colSidecar2, log: readSidecarLog(side2.proc.logPath, 0, -1)})
	}()
	var pids []int // postmasters: the one database's, then the shards'
	for _, c := range clusters {
		pid, err := postmasterPID(c)
		if err != nil {
			return err
		}
		pids = append(pids, pid)
	}
	targets := []target{
		{name: colDirect, host: "localhost", port: b.pg.Port(), tls: true, pgPids: pids[:1]},
		{name: colSidecar1, host: "127.0.0.1", port: side1.addr.Port, pid: side1.proc.pid(), pgPids: pids[:1]},
		{name: colSidecar2, host: "127.0.0.1", port: side2.addr.Port, pid: side2.proc.pid(), pgPids: pids[1:]},
	}
	tbl.targets = names
	run := func(ctx context.Context, t target, workload string, clients int, dur time.Duration, tag string) result {
		return b.runWorkload(ctx, t, envs[t.name], workload, clients, dur, tag)
	}
	rows := shardedRows(b.opts.shardedClients)
	b.logf("sharded table: pool %d per shard, %d rows x %d targets x %d runs of %s", txnPoolSize, len(rows), len(targets), b.opts.repeat, b.opts.duration)
	tbl.loadBefore = loadAverage()
	err = b.runTable(ctx, tbl, targets, rows, modeSharded, run, wlTeamTx)
	if err == nil {
		twin := target{name: colTwin2, host: "localhost", port: shards[0].Port(), tls: true, pgPids: pids[1:], peerTx: twinSignup(rt, twoMap.ShardNames())}
		for _, c := range shards[1:] {
			twin.peers = append(twin.peers, c.Port())
		}
		err = b.runTwin(ctx, info, twin, rows, envs[colSidecar2])
	}
	tbl.loadAfter = loadAverage()
	return err
}

// runTwin runs the signup's floor (twin.go) for every signup row, as
// many rounds as the table's targets ran.
func (b *bench) runTwin(ctx context.Context, info *shardedInfo, t target, rows []rowSpec, env *workloadEnv) error {
	for _, spec := range rows {
		if spec.proto != wlSignup {
			continue
		}
		var runs []result
		for i := range b.opts.repeat {
			r := b.runWorkload(ctx, t, env, wlSignup, spec.clients, b.opts.duration, joinTag(modeSharded, fmt.Sprintf("twin-r%d", i+1)))
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if r.failed() {
				b.logf("  %-9s %-8s c=%-3d FAILED: %s", t.name, spec.proto, spec.clients, r.summary())
			} else {
				b.logf("  %-9s %-8s c=%-3d %10.0f tps %8.3f ms%s", t.name, spec.proto, spec.clients, r.tps, r.latencyMs, percentiles(r))
			}
			runs = append(runs, r)
		}
		info.twin = append(info.twin, row{proto: spec.proto, clients: spec.clients, res: []result{combineRuns(runs)}})
	}
	return nil
}

// startShards creates and starts n clusters in the work directory
// (shard-0, shard-1, …) with settings and the Brownie schema. The clusters
// made so far are returned even on error, for the caller to stop.
func (b *bench) startShards(ctx context.Context, n int, settings map[string]string) ([]*pgcluster.Cluster, error) {
	var out []*pgcluster.Cluster
	for i := range n {
		c, err := pgcluster.Create(ctx, pgcluster.Config{
			Dir:        filepath.Join(b.dir, fmt.Sprintf("shard-%d", i)),
			ServerCert: filepath.Join(b.certDir, "server.crt"),
			ServerKey:  filepath.Join(b.certDir, "server.key"),
			CACert:     filepath.Join(b.certDir, "ca.crt"),
			Settings:   settings,
			BinDir:     b.binDir,
			Log:        b.cmdLog,
		})
		if err != nil {
			return out, fmt.Errorf("create shard-%d: %w", i, err)
		}
		out = append(out, c)
		b.logf("starting shard-%d on 127.0.0.1:%d (%s)", i, c.Port(), formatSettings(settings))
		if err := c.Start(ctx); err != nil {
			return out, fmt.Errorf("start shard-%d: %w", i, err)
		}
		if err := c.EnsureBrownieDatabase(ctx); err != nil {
			return out, fmt.Errorf("shard-%d: %w", i, err)
		}
	}
	return out, nil
}

// postmasterPID returns the process id of c's running server, the first
// line of its postmaster.pid.
func postmasterPID(c *pgcluster.Cluster) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.DataDir(), "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("%s/postmaster.pid: %w", c.DataDir(), err)
	}
	return pid, nil
}

// writeShardMap writes the Brownie shard map with the given primaries into
// the work directory and returns its path and parsed form.
func (b *bench) writeShardMap(name string, primaries []string) (string, *router.Map, error) {
	data, m, err := shardMapYAML(primaries)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(b.dir, name)
	return path, m, os.WriteFile(path, data, 0o644)
}

// loadCluster loads the rows of d whose team holds is true into c, as the
// superuser over the Unix socket (not through a sidecar), and checks the
// cluster then holds what d.counts says.
func (b *bench) loadCluster(ctx context.Context, c *pgcluster.Cluster, what string, d *dataset, holds func(string) bool) (loadCounts, error) {
	want := d.counts(holds)
	start := time.Now()
	if _, err := c.Exec(ctx, pgcluster.BrownieDatabase, d.loadSQL(holds)); err != nil {
		return want, fmt.Errorf("load %s: %w", what, err)
	}
	got, err := c.Exec(ctx, pgcluster.BrownieDatabase, d.checkSQL())
	if err != nil {
		return want, fmt.Errorf("check %s: %w", what, err)
	}
	if got != want.want() {
		return want, fmt.Errorf("load %s: it holds %s (teams|fan-out incidents), want %s", what, got, want.want())
	}
	b.logf("loaded %s: %d teams (%d of the fan-out set), %d fan-out incidents in %s", what, want.teams, want.fanTeams, want.fanIncidents, time.Since(start).Round(time.Millisecond))
	return want, nil
}

// explainFanout runs the fan-out read on c with EXPLAIN ANALYZE (twice; the
// second is kept), appends the plan to sharded/plans.txt and returns its
// summary.
func (b *bench) explainFanout(ctx context.Context, c *pgcluster.Cluster, where string, d *dataset) (planNote, error) {
	// TIMING OFF: timing every row costs more than the scan on a virtual
	// machine's clock; the total is still measured.
	q := "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) " + strings.Replace(sqlFanout, "$1", "'"+d.fanout.org+"'", 1)
	var out string
	for range 2 {
		var err error
		if out, err = c.Exec(ctx, pgcluster.BrownieDatabase, q); err != nil {
			return planNote{}, fmt.Errorf("explain the fan-out read on %s: %w", where, err)
		}
	}
	dir := filepath.Join(b.dir, "sharded")
	_ = os.MkdirAll(dir, 0o755)
	if f, err := os.OpenFile(filepath.Join(dir, "plans.txt"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(f, "--- %s (127.0.0.1:%d) ---\n%s\n\n%s\n\n", where, c.Port(), q, out)
		f.Close()
	}
	return planNote{where: where, summary: planSummary(out)}, nil
}

// planSummary shortens EXPLAIN ANALYZE text to its plan nodes and the
// execution time: "Limit → Sort → Seq Scan on incidents; 20.1 ms".
func planSummary(explain string) string {
	var nodes []string
	exec := ""
	for i, line := range strings.Split(explain, "\n") {
		t := strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(t, "Execution Time: "); ok {
			exec = v
			continue
		}
		arrow := strings.HasPrefix(t, "->")
		if i > 0 && !arrow {
			if strings.HasPrefix(t, "Sort Method: ") && len(nodes) > 0 {
				m, _, _ := strings.Cut(strings.TrimPrefix(t, "Sort Method: "), "  ")
				nodes[len(nodes)-1] += " (" + m + ")"
			}
			continue
		}
		t = strings.TrimSpace(strings.TrimPrefix(t, "->"))
		if node, _, ok := strings.Cut(t, " (actual"); ok { // "(actual rows=50 loops=1)"
			t = node
		}
		nodes = append(nodes, t)
	}
	s := strings.Join(nodes, " → ")
	if exec != "" {
		s += "; " + exec
	}
	return s
}
