package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/deploy/shardmap"
	"github.com/brownie/brownie-sidecar/router"
)

func TestBenchUUIDIsPostgresMd5CastToUUID(t *testing.T) {
	// SELECT md5('abc')::uuid
	if got := benchUUID("abc"); got != "90015098-3cd2-4fb0-d696-3f7d28e17f72" {
		t.Errorf("benchUUID(abc) = %s", got)
	}
}

func TestShardMapKeepsTheBrownieTablesWithTheBenchmarksShards(t *testing.T) {
	orig, err := router.ParseMap(shardmap.Brownie)
	if err != nil {
		t.Fatal(err)
	}
	for _, primaries := range [][]string{{"127.0.0.1:5001"}, {"127.0.0.1:5001", "127.0.0.1:5002"}} {
		data, m, err := shardMapYAML(primaries)
		if err != nil {
			t.Fatalf("%v: %v", primaries, err)
		}
		again, err := router.ParseMap(data)
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("the written map does not parse to the returned one: %v", err)
		}
		if len(m.Shards) != len(primaries) {
			t.Fatalf("%d shards, want %d", len(m.Shards), len(primaries))
		}
		for i, sh := range m.Shards {
			if sh.Name != fmt.Sprintf("shard-%d", i) || sh.Primary.Addr != primaries[i] || len(sh.Replicas) != 0 {
				t.Errorf("shard %d = %+v", i, sh)
			}
		}
		if !reflect.DeepEqual(m.Tables, orig.Tables) || m.KeyType != orig.KeyType || m.Unlisted != orig.Unlisted {
			t.Errorf("tables, key type or unlisted policy differ from deploy/shardmap/brownie.yaml")
		}
	}
}

// twoShardRouter is the router of a two-shard benchmark map.
func twoShardRouter(t *testing.T) *router.Router {
	t.Helper()
	_, m, err := shardMapYAML([]string{"127.0.0.1:5001", "127.0.0.1:5002"})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// section returns the statement of sql that starts with prefix, up to the
// next statement ("" when there is none).
func section(sql, prefix string) string {
	for _, st := range strings.Split(sql, ";\n") {
		if strings.HasPrefix(strings.TrimSpace(st), prefix) {
			return st
		}
	}
	return ""
}

func TestLoadingPutsEachTeamOnTheShardTheRouterPlacesItOn(t *testing.T) {
	targets := []string{colDirect, colSidecar1, colSidecar2}
	d := newDataset(targets, 100, 1000)
	rt := twoShardRouter(t)
	place, err := placement(rt, d.allTeams())
	if err != nil {
		t.Fatal(err)
	}
	if len(place) != 400 {
		t.Fatalf("%d teams placed, want 400", len(place))
	}

	seen := map[string]int{}
	fanTeams, fanIncidents := 0, 0
	for i, shard := range []string{"shard-0", "shard-1"} {
		holds := func(team string) bool { return place[team] == shard }
		sql := d.loadSQL(holds)
		teams := section(sql, "INSERT INTO teams")
		for _, id := range d.allTeams() {
			// Independent of Router.Place: the hash placement itself
			// (the benchmark's map has no overrides).
			k, err := router.ParseKey(router.KeyUUID, id)
			if err != nil {
				t.Fatal(err)
			}
			onShard := router.ShardIndex(k, 2) == i
			if got := strings.Contains(teams, "('"+id+"'"); got != onShard {
				t.Errorf("%s: team %s loaded %v, hash placement says %v", shard, id, got, onShard)
			}
			if onShard {
				seen[id]++
			}
		}
		// Replicated tables: every organization and user on every shard.
		orgs, users := section(sql, "INSERT INTO organizations"), section(sql, "INSERT INTO users")
		for _, s := range append([]teamSet{d.fanout}, d.requests[colDirect], d.requests[colSidecar1], d.requests[colSidecar2]) {
			if !strings.Contains(orgs, "('"+s.org+"'") {
				t.Errorf("%s lacks organization %s", shard, s.org)
			}
			if s.user != "" && !strings.Contains(users, "('"+s.user+"'") {
				t.Errorf("%s lacks user %s", shard, s.user)
			}
		}
		// The fan-out incidents join only this shard's fan-out teams.
		fan := section(sql, "INSERT INTO incidents (id, org_id, organization_id, team_id, title")
		for k, id := range d.fanout.teams {
			if got := strings.Contains(fan, fmt.Sprintf("(%d, '%s'::uuid)", k, id)); got != holds(id) {
				t.Errorf("%s: fan-out team %d in the incidents' join %v, placed here %v", shard, k, got, holds(id))
			}
		}
		c := d.counts(holds)
		want := 0
		for n := 1; n <= 1000; n++ {
			if holds(d.fanout.teams[n%100]) {
				want++
			}
		}
		if c.fanIncidents != want || c.fanTeams == 0 || c.fanTeams == 100 {
			t.Errorf("%s: counts %+v, want %d fan-out incidents and some but not all fan-out teams", shard, c, want)
		}
		if c.want() != fmt.Sprintf("%d|%d", c.teams, want) {
			t.Errorf("%s: want() = %s", shard, c.want())
		}
		fanTeams += c.fanTeams
		fanIncidents += c.fanIncidents
	}
	for _, id := range d.allTeams() {
		if seen[id] != 1 {
			t.Errorf("team %s is on %d shards", id, seen[id])
		}
	}
	if fanTeams != 100 || fanIncidents != 1000 {
		t.Errorf("the shards hold %d fan-out teams and %d incidents together, want 100 and 1000", fanTeams, fanIncidents)
	}

	all := d.counts(func(string) bool { return true })
	if all.teams != 400 || all.fanIncidents != 1000 || all.requestTeams[colSidecar2] != 100 {
		t.Errorf("the one database's counts = %+v", all)
	}
	if sql := d.loadSQL(func(string) bool { return true }); !strings.HasSuffix(sql, "COMMIT;\nANALYZE;\n") || !strings.Contains(sql, "FROM generate_series(1, 1000) AS n") {
		t.Errorf("load SQL does not generate the incidents in one transaction:\n%s", sql)
	}
}

func TestTheFanoutReadMustReturnTheNewestIncidentsInOrder(t *testing.T) {
	d := newDataset([]string{colDirect}, 10, 120)
	want := d.newestFanout(fanoutLimit)
	if len(want) != 50 || want[0] != benchUUID("bench-fanout-incident-1") || want[49] != benchUUID("bench-fanout-incident-50") {
		t.Fatalf("newestFanout = %d ids, first %s", len(want), want[0])
	}
	if got := newDataset([]string{colDirect}, 10, 20).newestFanout(fanoutLimit); len(got) != 20 {
		t.Errorf("with 20 incidents the newest 50 are %d", len(got))
	}
	env, err := newWorkloadEnv(d, colDirect)
	if err != nil || len(env.reqTeams) != 10 || !env.reqUser.Valid || uuidText(env.fanOrg) != d.fanout.org {
		t.Fatalf("newWorkloadEnv = %+v, %v", env, err)
	}
	if _, err := newWorkloadEnv(d, colSidecar2); err == nil {
		t.Error("an env for a target without data")
	}
}

func TestLatencyStatsAreMeanAndNearestRankPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	mean, p50, p95 := latencyStats(ds)
	if mean != 50.5 || p50 != 50 || p95 != 95 {
		t.Errorf("latencyStats(1..100 ms) = %v, %v, %v", mean, p50, p95)
	}
	if mean, p50, p95 := latencyStats([]time.Duration{3 * time.Millisecond}); mean != 3 || p50 != 3 || p95 != 3 {
		t.Errorf("latencyStats(3 ms) = %v, %v, %v", mean, p50, p95)
	}
	if mean, p50, p95 := latencyStats(nil); mean != 0 || p50 != 0 || p95 != 0 {
		t.Errorf("latencyStats() = %v, %v, %v", mean, p50, p95)
	}
}

func TestNewUUIDIsARandomVersion4UUID(t *testing.T) {
	rng := seededRand()
	a, b := newUUID(rng), newUUID(rng)
	s := uuidText(a)
	if len(s) != 36 || s[14] != '4' || !strings.ContainsRune("89ab", rune(s[19])) || a == b {
		t.Errorf("newUUID = %s, %s", s, uuidText(b))
	}
}

func TestShardedRowsPutTheFanoutReadFirst(t *testing.T) {
	want := []rowSpec{{wlFanout, 1}, {wlFanout, 10}, {wlTeamTx, 10}, {wlSignup, 10}}
	if got := shardedRows(10); !slices.Equal(got, want) {
		t.Errorf("shardedRows(10) = %v", got)
	}
	if got := shardedRows(1); len(got) != 3 || got[0] != (rowSpec{wlFanout, 1}) {
		t.Errorf("shardedRows(1) = %v", got)
	}
}

func TestFlagsChooseTheShardedTableAlone(t *testing.T) {
	o, err := parseFlags([]string{"-modes", "sharded", "-sharded-clients", "4", "-fanout-incidents", "5000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.modes, []string{"sharded"}) || usesPgbench(o.modes) || o.shardedClients != 4 || o.fanoutIncidents != 5000 {
		t.Fatalf("options = %+v", o)
	}
	_, err = parseFlags([]string{"-sharded-clients", "0", "-fanout-incidents", "49"}, io.Discard)
	for _, want := range []string{"-sharded-clients", "-fanout-incidents"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestCombineRunsTakesTheMedianPercentiles(t *testing.T) {
	run := func(p50, p95 float64) result {
		return result{tps: 1, latencyMs: p50, p50Ms: p50, p95Ms: p95, parsed: true}
	}
	got := combineRuns([]result{run(1, 9), run(3, 7), run(2, 8)})
	if got.p50Ms != 2 || got.p95Ms != 8 {
		t.Errorf("combined p50 %v, p95 %v; want 2 and 8", got.p50Ms, got.p95Ms)
	}
}

// lat is a clean run with a latency profile.
func lat(tps, mean float64) result {
	return result{tps: tps, latencyMs: mean, p50Ms: mean * 0.9, p95Ms: mean * 2, parsed: true, processed: 100}
}

// shardedTable is a sharded table as runSharded fills it.
func shardedTable(rows ...row) *table {
	return &table{mode: modeSharded, poolSize: 10, targets: []string{colDirect, colSidecar1, colSidecar2}, rows: rows, loadBefore: 1, loadAfter: 9,
		sharded: &shardedInfo{incidents: 100000, teams: 100, settings: map[string]string{"shared_buffers": "128MB", "max_connections": "300"},
			shards: []shardLoad{
				{name: "shard-0", counts: loadCounts{fanTeams: 50, fanIncidents: 50000, requestTeams: map[string]int{colSidecar2: 62}}},
				{name: "shard-1", counts: loadCounts{fanTeams: 50, fanIncidents: 50000, requestTeams: map[string]int{colSidecar2: 38}}},
			},
			plans: []planNote{{"one database", "Limit → Sort (top-N heapsort) → Seq Scan on incidents; 16.1 ms"}},
		}}
}

func TestShardedTargetsAreJudgedPerRow(t *testing.T) {
	tbl := shardedTable(
		row{proto: wlFanout, clients: 1, res: []result{lat(50, 20), lat(48, 21), lat(80, 12)}},
		row{proto: wlFanout, clients: 10, res: []result{lat(60, 160), lat(58, 170), lat(45, 220)}},
		row{proto: wlTeamTx, clients: 10, res: []result{lat(1000, 10), lat(900, 11), lat(820, 12)}},
		row{proto: wlSignup, clients: 10, res: []result{lat(1200, 8), lat(1100, 9), lat(500, 20)}},
	)
	team := tbl.evalShardTarget(shardTargets[0])
	if !team.ok() || team.judged != 1 || !slices.Equal(team.details, []string{"10 clients: 0.911 (820 vs 900 TPS)"}) {
		t.Errorf("single-team = %+v", team)
	}
	signup := tbl.evalShardTarget(shardTargets[1])
	if signup.ok() || signup.met != 0 || !slices.Equal(signup.details, []string{"10 clients: 0.417 (500 vs 1200 TPS)"}) {
		t.Errorf("signup = %+v", signup)
	}
	fan := tbl.evalShardTarget(shardTargets[2])
	if fan.ok() || fan.judged != 2 || fan.met != 1 || !slices.Equal(fan.details, []string{"1 client: 0.600 (12.000 vs 20.000 ms)", "10 clients: 1.375 (220.000 vs 160.000 ms)"}) {
		t.Errorf("fan-out = %+v", fan)
	}

	// A failed run (a wrong answer) is not met whatever its numbers; a
	// missing row is not judged.
	tbl.rows[0].res[2] = result{tps: 90, latencyMs: 1, parsed: true, failedTx: 1, stderr: []string{"client 0: wrong result: the fan-out read returned 100 rows, want exactly 50"}}
	tbl.rows[1].res[2] = lat(60, 180)
	fan = tbl.evalShardTarget(shardTargets[2])
	if fan.ok() || fan.met != 1 || fan.details[0] != "1 client: sidecar-2 failed (see Errors)" {
		t.Errorf("fan-out with a wrong answer = %+v", fan)
	}
	tbl.rows = tbl.rows[:2]
	if v := tbl.evalShardTarget(shardTargets[0]); v.judged != 0 || v.ok() {
		t.Errorf("single-team without its row = %+v", v)
	}
}

func TestReportRendersTheShardedTable(t *testing.T) {
	tbl := shardedTable(
		row{proto: wlFanout, clients: 1, res: []result{lat(50, 20), lat(48, 21), lat(80, 12)}},
		row{proto: wlTeamTx, clients: 10, res: []result{lat(1000, 10), lat(900, 11), lat(850, 12)}},
		row{proto: wlSignup, clients: 10, res: []result{lat(1200, 8), lat(1100, 9), lat(700, 14)}},
	)
	tbl.rows[1].res[0].pgCPUUs = 100
	tbl.rows[1].res[1].cpuUs, tbl.rows[1].res[1].pgCPUUs = 40, 90
	tbl.rows[1].res[2].cpuUs, tbl.rows[1].res[2].pgCPUUs = 55.55, 180
	rep := &report{duration: 10 * time.Second, cpus: 2, skipRSS: true, tables: []*table{tbl}}
	md := rep.markdown()
	reportHas(t, md,
		"2 CPUs. Runs of 10 s.",
		"## Sharded: one database, the sidecar on one shard and on two (transaction mode, pool 10 per shard)",
		"(`max_connections=300 shared_buffers=128MB`",
		"shard-0 holds 50 fan-out teams (50,000 incidents) and 62 of sidecar-2's teams; shard-1 holds 50 fan-out teams (50,000 incidents) and 38 of sidecar-2's teams.",
		"one database: Limit → Sort (top-N heapsort) → Seq Scan on incidents; 16.1 ms.",
		"- **fanout**: `"+sqlFanout+"`",
		"1-minute load average 1.00 before the table (just after loading), 9.00 after",
		"| workload | clients | direct TPS | sidecar-1 TPS | sidecar-2 TPS | direct lat ms mean / p50 / p95 | sidecar-1 lat ms mean / p50 / p95 | sidecar-2 lat ms mean / p50 / p95 | direct CPU µs/tx | sidecar-1 CPU µs/tx | sidecar-2 CPU µs/tx | sidecar-1/direct TPS | sidecar-2/sidecar-1 TPS | sidecar-2/direct TPS | sidecar-2/direct latency |\n|---|---:|",
		"| fanout | 1 | 50 | 48 | 80 | 20.000 / 18.000 / 40.000 | 21.000 / 18.900 / 42.000 | 12.000 / 10.800 / 24.000 | – | – | – | 0.96 | 1.67 | 1.60 | 0.60 |",
		"| team-tx | 10 | 1000 | 900 | 850 | 10.000 / 9.000 / 20.000 | 11.000 / 9.900 / 22.000 | 12.000 / 10.800 / 24.000 | 100 | 40 + 90 | 56 + 180 | 0.90 | 0.94 | 0.85 | 1.20 |",
		"- single-team transaction on two shards ≥ 0.90 × the one-shard sidecar's TPS: **met** (10 clients: 0.944 (850 vs 900 TPS)).",
		"- signup on two shards (two-phase commit) ≥ 0.50 × the one database's TPS: **met** (10 clients: 0.583 (700 vs 1200 TPS)).",
		"- fan-out ORDER BY … LIMIT 50 mean latency on two shards ≤ 1.30 × the one database's: **met** (1 client: 0.600 (12.000 vs 20.000 ms)).",
		"No errors: every transaction of the sharded table succeeded with the answers it must give.",
	)
	for _, not := range []string{"pgbench -S", "Other work competed", "every pgbench run"} {
		if strings.Contains(md, not) {
			t.Errorf("a report with only the sharded table says %q:\n%s", not, md)
		}
	}
	if rep.hasErrors() {
		t.Error("hasErrors with every run clean")
	}

	// A wrong answer fails the run, the target and the benchmark.
	tbl.rows[0].res[2] = result{processed: 0, failedTx: 1, stderr: []string{"client 0: wrong result: the fan-out read returned 100 rows, want exactly 50 (ORDER BY created_at DESC LIMIT 50 over every shard)"}, logPath: "sharded-fanout-c1-sidecar-2.log"}
	if !rep.hasErrors() {
		t.Error("hasErrors is false with a wrong answer")
	}
	md = rep.markdown()
	reportHas(t, md,
		"| fanout | 1 | 50 | 48 | ERR | 20.000 / 18.000 / 40.000 | 21.000 / 18.900 / 42.000 | ERR |",
		"**not met** (1 client: sidecar-2 failed (see Errors)).",
		"## Errors (verbatim)",
		"sharded mode, sidecar-2, fanout, 1 clients",
		"(no TPS or latency measured)",
		"the fan-out read returned 100 rows, want exactly 50",
	)
}

func TestReportWithEveryTableSaysEveryCleanLine(t *testing.T) {
	tbl := shardedTable(row{proto: wlSignup, clients: 10, res: []result{lat(1200, 8), lat(1100, 9), lat(700, 14)}})
	tbl.sidecarLogs = []namedLog{{name: colSidecar2, log: sidecarLog{byMsg: map[string]int{"warn two-phase commit slow": 2}}}}
	rep := &report{duration: 10 * time.Second, scale: 10, cpus: 2, skipRSS: true, tables: []*table{
		sessionTable(row{proto: "simple", clients: 1, res: []result{ok(1000), ok(800), ok(900)}}), tbl,
	}}
	rep.skipRSS, rep.rss = false, &rssResult{wanted: 1, opened: 1, hwmKB: 70 << 10, baselineKB: 60 << 10}
	reportHas(t, rep.markdown(),
		"`pgbench -S -T 10 -n`, scale 10",
		"No errors: every pgbench run exited 0 with nothing on stderr and no failed transactions, every transaction of the sharded table succeeded with the answers it must give, and every idle session reached ReadyForQuery.\n",
		"- sidecar-2, during the sharded table, by message:",
		"2× warn two-phase commit slow",
	)
}

func TestPlanSummaryKeepsTheNodesAndTheTime(t *testing.T) {
	explain := `Limit (actual rows=50 loops=1)
  ->  Gather Merge (actual rows=50 loops=1)
        Workers Planned: 1
        Workers Launched: 1
        ->  Sort (actual rows=50 loops=2)
              Sort Key: created_at DESC
              Sort Method: top-N heapsort  Memory: 32kB
              Worker 0:  Sort Method: top-N heapsort  Memory: 32kB
              ->  Parallel Seq Scan on incidents (actual rows=50000 loops=2)
                    Filter: (org_id = '20457639-8da3-53b3-7970-9af7b9b5f946'::uuid)
Planning Time: 1.776 ms
Execution Time: 55.368 ms`
	want := "Limit → Gather Merge → Sort (top-N heapsort) → Parallel Seq Scan on incidents; 55.368 ms"
	if got := planSummary(explain); got != want {
		t.Errorf("planSummary = %q, want %q", got, want)
	}
}

func TestStatParsingFindsParentAndCPUTime(t *testing.T) {
	// A command name with spaces and a parenthesis, as /proc shows it.
	stat := "4242 (postgres: a (b) c) S 4200 4242 4242 0 -1 4194560 1 0 0 0 17 5 300 12 20 0 1 0 100 1000 10"
	ppid, ticks, reaped, err := parseStat([]byte(stat))
	if err != nil || ppid != 4200 || ticks != 22 || reaped != 312 {
		t.Errorf("parseStat = %d, %d, %d, %v; want 4200, 22, 312", ppid, ticks, reaped, err)
	}
	if _, _, _, err := parseStat([]byte("4242 (x) S 1")); err == nil {
		t.Error("a short stat line parsed")
	}
	self, err := cpuTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// This process and its children (none) have used at least what it
	// alone had used a moment ago.
	if tree, err := treeTicks(os.Getpid()); err != nil || tree < self {
		t.Errorf("treeTicks(self) = %d, %v; cpuTicks(self) = %d", tree, err, self)
	}
	// A child that computed and exited still counts, once waited for, as
	// a backend of a connection that ended during a run does.
	before, err := treeTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	ru, _ := rusage(cmd.ProcessState)
	child := (ru.Utime.Nano() + ru.Stime.Nano()) * clockTicks / 1e9
	after, err := treeTicks(os.Getpid())
	if err != nil || child < 5 || after-before < child-1 {
		t.Errorf("treeTicks(self) grew by %d ticks (%v) around a child that used %d", after-before, err, child)
	}
}

func TestThousandsSeparatesWithCommas(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 100000: "100,000", 1234567: "1,234,567", -5000: "-5,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestTheSignupFloorIsReportedAgainstTheOneDatabaseAndTheSidecar(t *testing.T) {
	tbl := shardedTable(
		row{proto: wlSignup, clients: 10, res: []result{lat(1200, 8), lat(1100, 9), lat(300, 30)}},
	)
	floor := lat(480, 20)
	floor.pgCPUUs = 1900
	tbl.sharded.twin = []row{{proto: wlSignup, clients: 10, res: []result{floor}}}
	var b strings.Builder
	tbl.writeTwin(&b)
	for _, want := range []string{
		"**client-2**",
		"- 10 clients: 480 TPS, mean latency 20.000 ms, PostgreSQL CPU 1900 µs per signup; 0.40 of the one database's TPS",
		"below the 0.50 target with no sidecar at all",
		"the sidecar on two shards reaches 0.62 of this floor",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("floor paragraph lacks %q:\n%s", want, b.String())
		}
	}
	tbl.sharded.twin[0].res[0] = result{failedTx: 1, stderr: []string{"boom"}}
	b.Reset()
	tbl.writeTwin(&b)
	if !strings.Contains(b.String(), "- 10 clients: failed") {
		t.Errorf("a failed floor run is not reported as failed:\n%s", b.String())
	}
}

// fakeProc is a procFS whose processes change as they are read: reap,
// when set, runs before the stat read numbered at (counting from 1).
type fakeProc struct {
	procs map[int]*procStat
	reads int
	at    int
	reap  func(f *fakeProc)
}

func (f *fakeProc) pids() ([]int, error) {
	var pids []int
	for pid := range f.procs {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids, nil
}

func (f *fakeProc) stat(pid int) ([]byte, error) {
	f.reads++
	if f.reads == f.at && f.reap != nil {
		f.reap(f)
	}
	st, ok := f.procs[pid]
	if !ok {
		return nil, os.ErrNotExist
	}
	return fmt.Appendf(nil, "%d (postgres) S %d 1 1 0 -1 0 0 0 0 0 %d %d %d %d 20 0 1 0", pid, st.ppid, st.utime, st.stime, st.cutime, st.cstime), nil
}

// waitFor moves child's CPU time into its parent's reaped time and removes
// it, as the postmaster's wait for an exited backend does.
func (f *fakeProc) waitFor(child int) {
	c := f.procs[child]
	p := f.procs[c.ppid]
	p.cutime, p.cstime = p.cutime+c.utime, p.cstime+c.stime
	delete(f.procs, child)
}

func TestTreeTicksCountsABackendWaitedForDuringTheReadingOnce(t *testing.T) {
	// The postmaster (pid 10) has used 5 ticks and waited for children
	// that used 100; backends 20 and 30 have used 40 and 7 (30 + 10 and
	// 5 + 2); process 40 is not PostgreSQL's. Backend 20 exits and is
	// waited for at every point of the reading: the total is 152 whenever
	// that happens.
	const want = 5 + 100 + 40 + 7
	for at := 1; at <= 8; at++ {
		f := &fakeProc{
			procs: map[int]*procStat{
				10: {ppid: 1, utime: 3, stime: 2, cutime: 60, cstime: 40},
				20: {ppid: 10, utime: 30, stime: 10},
				30: {ppid: 10, utime: 5, stime: 2},
				40: {ppid: 1, utime: 1000},
			},
			at:   at,
			reap: func(f *fakeProc) { f.waitFor(20) },
		}
		if got, err := treeTicksOf(f, 10); err != nil || got != want {
			t.Errorf("backend waited for before stat read %d: treeTicksOf = %d, %v; want %d", at, got, err, want)
		}
	}
}

func TestTreeTicksGivesUpWhenChildrenNeverStopExiting(t *testing.T) {
	f := &fakeProc{procs: map[int]*procStat{10: {ppid: 1}}}
	next := 100
	f.reap = func(f *fakeProc) {
		// A new child that used a tick, waited for before every reading of
		// the root ends: the root's reaped time never holds still.
		f.procs[next] = &procStat{ppid: 10, utime: 1}
		f.waitFor(next)
		next++
		f.at = f.reads + 2
	}
	f.at = 2
	if got, err := treeTicksOf(f, 10); err == nil {
		t.Errorf("treeTicksOf = %d, nil; want an error", got)
	}
}
