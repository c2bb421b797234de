package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgbench15Output is pgbench 15's standard output for a -T run.
const pgbench15Output = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: extended
number of clients: 1
number of threads: 1
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 4256
number of failed transactions: 0 (0.000%)
latency average = 0.234 ms
initial connection time = 3.053 ms
tps = 4268.117185 (without initial connection time)
`

func TestParsePgbenchReadsTPSAndMeanLatency(t *testing.T) {
	r := parsePgbench(pgbench15Output)
	if !r.parsed || r.tps != 4268.117185 || r.latencyMs != 0.234 || r.processed != 4256 || r.failedTx != 0 {
		t.Fatalf("parsePgbench = %+v", r)
	}
	if r.failed() {
		t.Fatalf("a clean run counts as failed: %+v", r)
	}
}

func TestConnectRowsOpenAConnectionPerTransaction(t *testing.T) {
	tg := target{host: "127.0.0.1", port: 6432}
	got := strings.Join(pgbenchArgs(tg, protoConnect, 4, 5*time.Second, 0), " ")
	if want := "-S -C -M simple -c 4 -j 2 -T 5 -n -h 127.0.0.1 -p 6432"; !strings.HasPrefix(got, want) {
		t.Errorf("connect row: pgbench %s, want it to start with %s", got, want)
	}
	if got := strings.Join(pgbenchArgs(tg, "extended", 1, time.Second, 0), " "); !strings.HasPrefix(got, "-S -M extended -c 1 -j 1 -T 1 -n -h ") {
		t.Errorf("extended row: pgbench %s", got)
	}
	if got := strings.Join(pgbenchArgs(tg, "simple", 10, time.Second, 5000), " "); !strings.HasPrefix(got, "-S -M simple -c 10 -j 2 -T 1 -n -R 5000 -h ") {
		t.Errorf("rate-limited row: pgbench %s", got)
	}
	// pgbench -C counts the connections in its TPS, and says so.
	out := strings.Replace(pgbench15Output, "tps = 4268.117185 (without initial connection time)", "tps = 3159.5 (including reconnection times)", 1)
	if r := parsePgbench(out); !r.parsed || r.tps != 3159.5 {
		t.Fatalf("parsePgbench of a -C run = %+v", r)
	}
}

func TestParsePgbenchWithoutResultsIsAFailure(t *testing.T) {
	out := strings.Split(pgbench15Output, "latency average")[0]
	if r := parsePgbench(out); r.parsed || !r.failed() {
		t.Fatalf("truncated output parsed as %+v", r)
	}
}

func TestFailedTransactionsMarkTheRunFailed(t *testing.T) {
	out := strings.Replace(pgbench15Output, "failed transactions: 0 (0.000%)", "failed transactions: 3 (0.070%)", 1)
	if r := parsePgbench(out); !r.parsed || r.failedTx != 3 || !r.failed() {
		t.Fatalf("parsePgbench = %+v", r)
	}
}

func TestFlagsRejectFractionalDurationsAndUnknownProtocols(t *testing.T) {
	_, err := parseFlags([]string{"-duration", "1500ms", "-protocols", "simple,copy", "-clients", "1,x"}, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"-duration", `"copy"`, `"x"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestFlagsDefaultToTheAcceptanceMatrix(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 10*time.Second || len(o.clients) != 3 || len(o.protocols) != 3 || o.rssClients != 2000 || o.skipRSS {
		t.Fatalf("defaults = %+v", o)
	}
	if o.repeat != 1 || !slices.Equal(o.modes, []string{"session", "transaction", "sharded"}) {
		t.Fatalf("repeat %d, modes %q; want 1 and every table", o.repeat, o.modes)
	}
	if !slices.Equal(o.txnRows, txnRows) {
		t.Fatalf("transaction rows %v; want every row", o.txnRows)
	}
	if o.shardedClients != 10 || o.fanoutIncidents != 100000 {
		t.Fatalf("sharded clients %d, fan-out incidents %d; want 10 and 100000", o.shardedClients, o.fanoutIncidents)
	}
}

func TestFlagsChooseTransactionRowsInTableOrder(t *testing.T) {
	o, err := parseFlags([]string{"-txn-rows", "connect, simple"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []rowSpec{{"simple", 10}, {"simple", 50}, {protoConnect, 4}}
	if !slices.Equal(o.txnRows, want) {
		t.Fatalf("transaction rows %v; want %v", o.txnRows, want)
	}
	_, err = parseFlags([]string{"-txn-rows", "connect,copy"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `"copy"`) {
		t.Fatalf("error %v; want one naming \"copy\"", err)
	}
}

func TestFlagsChooseTablesInFixedOrderAndRejectBadRepeatAndModes(t *testing.T) {
	o, err := parseFlags([]string{"-modes", "transaction, session,transaction", "-repeat", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.repeat != 3 || !slices.Equal(o.modes, []string{"session", "transaction"}) {
		t.Fatalf("repeat %d, modes %q", o.repeat, o.modes)
	}
	_, err = parseFlags([]string{"-repeat", "0", "-modes", "statement"}, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"-repeat", `"statement"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestMedianOfOddAndEvenCountsLeavesItsInputAlone(t *testing.T) {
	xs := []float64{30, 10, 20}
	if m := median(xs); m != 20 {
		t.Errorf("median(30,10,20) = %v", m)
	}
	if !slices.Equal(xs, []float64{30, 10, 20}) {
		t.Errorf("median reordered its input: %v", xs)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median(4,1,3,2) = %v", m)
	}
	if m := median(nil); m != 0 {
		t.Errorf("median() = %v", m)
	}
}

func TestCombineRunsTakesMediansAndKeepsTheFirstFailure(t *testing.T) {
	ok := func(tps, lat float64) result {
		return result{tps: tps, latencyMs: lat, parsed: true, processed: 10, logPath: "ok.log"}
	}
	one := ok(100, 1)
	if got := combineRuns([]result{one}); got.runs != 0 || got.tps != 100 || got.logPath != "ok.log" {
		t.Fatalf("a single run changed: %+v", got)
	}

	// TPS and latency are medians each on their own.
	got := combineRuns([]result{ok(900, 1.1), ok(1100, 0.9), ok(1000, 2.0)})
	if got.failed() || got.tps != 1000 || got.latencyMs != 1.1 || got.processed != 30 || got.runs != 3 {
		t.Fatalf("combineRuns = %+v", got)
	}
	if sp := got.spread(); sp != 10 {
		t.Errorf("spread = %v, want 10 (%%)", sp)
	}
	if c := tpsCell(got); c != "1000 ±10%" {
		t.Errorf("tpsCell = %q", c)
	}

	bad := result{exitErr: errors.New("exit status 2"), stderr: []string{"pgbench: error: client 0 aborted"}, logPath: "bad.log"}
	got = combineRuns([]result{ok(900, 1), bad, ok(1100, 1)})
	if !got.failed() || got.tps != 1000 || got.failedRuns != 1 || got.incomplete != 1 || got.logPath != "bad.log" || got.stderr[0] != bad.stderr[0] {
		t.Fatalf("combineRuns with a failed run = %+v", got)
	}
	if c := tpsCell(got); c != "1000 ±10%*" {
		t.Errorf("tpsCell = %q", c)
	}

	got = combineRuns([]result{bad, bad})
	if got.parsed || !got.failed() || tpsCell(got) != "ERR" {
		t.Fatalf("combineRuns of failed runs = %+v", got)
	}
}

func ok(tps float64) result { return result{tps: tps, latencyMs: 1, parsed: true} }

func sessionTable(rows ...row) *table {
	return &table{mode: modeSession, poolSize: 60, targets: []string{"direct", "pgbouncer", "sidecar"}, rows: rows, loadBefore: 1.5, loadAfter: 3.25}
}

func TestReportComparesTheSidecarWithPgBouncerPerRow(t *testing.T) {
	rep := &report{duration: 5 * time.Second, scale: 10, cpus: 2, skipRSS: true, tables: []*table{sessionTable(
		row{proto: "simple", clients: 1, res: []result{ok(1000), ok(800), ok(900)}},
		row{proto: "prepared", clients: 10, res: []result{ok(1000), ok(800), {stderr: []string{"pgbench: error: client 0 aborted"}}}},
	)}}
	md := rep.markdown()
	reportHas(t, md,
		"## Session mode (pool 60)",
		"1-minute load average 1.50 before the table, 3.25 after. **Other work competed for the 2 CPUs",
		"| protocol | clients | direct TPS | pgbouncer TPS | sidecar TPS | direct lat ms | pgbouncer lat ms | sidecar lat ms | sidecar/pgbouncer | sidecar/direct |",
		"| simple | 1 | 1000 | 800 | 900 | 1.000 | 1.000 | 1.000 | 1.12 | 0.90 |",
		"| prepared | 10 | 1000 | 800 | ERR |",
		"**not met** (1 of 2 rows); not met in prepared/10 (n/a)",
		"session mode, sidecar, prepared, 10 clients",
		"pgbench: error: client 0 aborted",
	)
	if strings.Contains(md, "Transaction mode") {
		t.Errorf("report has a transaction table it did not measure:\n%s", md)
	}
	if !rep.hasErrors() {
		t.Error("hasErrors is false with a failed run")
	}
}

const preparedErr = `pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist`

// txnTable is a transaction table with its fixed rows, with PgBouncer's
// prepared row failing as expected.
func txnTable(sidecarPrepared float64) *table {
	bouncerPrepared := result{exitErr: errors.New("exit status 2"), stderr: []string{"pgbench: error: client 0 aborted", preparedErr}, logPath: "txn-prepared-c50-pgbouncer.log"}
	un := []bool{true, false}
	return &table{mode: modeTransaction, poolSize: 10, targets: []string{"pgbouncer", "sidecar"}, loadBefore: 0.5, loadAfter: 0.75, rows: []row{
		{proto: "simple", clients: 10, res: []result{ok(8000), ok(8800)}, unsupported: []bool{false, false}},
		{proto: "simple", clients: 50, res: []result{ok(7000), ok(7700)}, unsupported: []bool{false, false}},
		{proto: "extended", clients: 10, res: []result{ok(6000), ok(6600)}, unsupported: []bool{false, false}},
		{proto: "extended", clients: 50, res: []result{ok(5000), ok(5500)}, unsupported: []bool{false, false}},
		{proto: "prepared", clients: 50, res: []result{bouncerPrepared, ok(sidecarPrepared)}, unsupported: un},
	}}
}

func TestTransactionTableShowsPgBouncerPreparedAsAnExpectedFailure(t *testing.T) {
	rep := &report{duration: 5 * time.Second, scale: 10, cpus: 2, skipRSS: true, tables: []*table{txnTable(6050)}}
	md := rep.markdown()
	reportHas(t, md,
		"## Transaction mode (pool 10)",
		"PgBouncer `pool_mode = transaction`, `default_pool_size = 10`; sidecar `POOL_MODE=transaction POOL_SIZE=10`.",
		"1-minute load average 0.50 before the table, 0.75 after.\n",
		"| protocol | clients | pgbouncer TPS | sidecar TPS | pgbouncer lat ms | sidecar lat ms | sidecar/pgbouncer |\n|---|---:|---:|---:|---:|---:|---:|\n",
		"| simple | 10 | 8000 | 8800 | 1.000 | 1.000 | 1.10 |",
		"| prepared | 50 | failed† | 6050 | failed† | 1.000 | n/a |",
		"† pgbouncer, prepared/50: failed as expected",
		"1× pgbench: error: client N aborted\n1× "+strings.Replace(preparedErr, "client 3", "client N", 1)+"\npgbench exit status 2\n",
		"Targets: sidecar TPS ≥ 0.95× PgBouncer TPS in every row both can run, new connections (connect rows, `pgbench -C`) ≥ 1.00×: **met** (4 of 4 rows; PgBouncer cannot run prepared/50); sidecar prepared TPS ≥ its extended TPS: **met** (50 clients: 6050 vs 5500 (1.10)).",
		"No errors: every pgbench run exited 0 with nothing on stderr and no failed transactions (apart from the 1 expected failure(s) marked †)",
	)
	if strings.Contains(md, "sidecar/direct") || strings.Contains(md, "## Errors") {
		t.Errorf("unexpected direct column or error section:\n%s", md)
	}
	if rep.hasErrors() {
		t.Error("the expected PgBouncer failure counts as an error")
	}
}

func TestTransactionTargetsNotMet(t *testing.T) {
	tbl := txnTable(5400)                                                                                                                   // prepared below extended
	tbl.rows[1].res[1] = ok(6600)                                                                                                           // 0.94: under 0.95
	tbl.rows[2].res[1] = ok(5700)                                                                                                           // 0.95: met
	tbl.rows = append(tbl.rows, row{proto: protoConnect, clients: 4, res: []result{ok(3000), ok(2970)}, unsupported: []bool{false, false}}) // 0.99: under 1.0
	e := tbl.evalVsBouncer()
	if e.ok() || e.met != 3 || e.judged != 5 || !slices.Equal(e.below, []string{"simple/50 (0.94)", "connect/4 (0.99)"}) || !slices.Equal(e.skipped, []string{"prepared/50"}) {
		t.Errorf("evalVsBouncer = %+v", e)
	}
	p := tbl.evalPreparedVsExtended()
	if p.ok() || p.judged != 1 || !slices.Equal(p.pairs, []string{"50 clients: 5400 vs 5500 (0.98)"}) {
		t.Errorf("evalPreparedVsExtended = %+v", p)
	}
	md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown()
	reportHas(t, md, "**not met** (3 of 5 rows; not met in simple/50 (0.94), connect/4 (0.99); PgBouncer cannot run prepared/50); sidecar prepared TPS ≥ its extended TPS: **not met** (50 clients: 5400 vs 5500 (0.98)).")

	// Without an extended row at the prepared row's client count the
	// second target is not judged rather than met.
	tbl.rows = slices.DeleteFunc(tbl.rows, func(r row) bool { return r.proto == "extended" && r.clients == 50 })
	if p := tbl.evalPreparedVsExtended(); p.judged != 0 || p.ok() {
		t.Errorf("evalPreparedVsExtended without a pair = %+v", p)
	}
}

func TestPgBouncerPreparedFailingForAnotherReasonIsAnError(t *testing.T) {
	tbl := txnTable(6050)
	tbl.rows[4].res[0] = result{exitErr: errors.New("exit status 1"), stderr: []string{`pgbench: error: connection to server at "127.0.0.1", port 6432 failed: Connection refused`}}
	rep := &report{cpus: 2, skipRSS: true, tables: []*table{tbl}}
	if !rep.hasErrors() {
		t.Error("hasErrors is false")
	}
	md := rep.markdown()
	reportHas(t, md,
		"| prepared | 50 | ERR | 6050 |",
		"## Errors (verbatim)",
		"transaction mode, pgbouncer, prepared, 50 clients",
		"Connection refused",
		"**not met** (4 of 5 rows; not met in prepared/50 (n/a))",
	)

	// And one that unexpectedly succeeds is judged like any other row.
	tbl.rows[4].res[0] = ok(4000)
	if rep.hasErrors() {
		t.Error("hasErrors with every run clean")
	}
	md = rep.markdown()
	reportHas(t, md, "| prepared | 50 | 4000 | 6050 |", "Unexpected: pgbouncer ran prepared/50 without errors", "**met** (5 of 5 rows)")
}

func TestCollapseLinesCountsMessagesAcrossClientsMostFrequentFirst(t *testing.T) {
	got := collapseLines([]string{
		`pgbench: error: ERROR:  prepared statement "P_0" already exists`,
		`pgbench: error: client 29 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist`,
		`pgbench:pgbench: error: ERROR:  prepared statement "P_0" already exists`,
		`pgbench: error: client 4 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist`,
		`pgbench: error: client 5 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist`,
		`pgbench: error: ERROR:  prepared statement "P_0" already exists`,
		`pgbench: error: Run was aborted; the above results are incomplete.`,
	}, 2)
	want := []string{
		`3× pgbench: error: client N script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist`,
		`2× pgbench: error: ERROR:  prepared statement "P_0" already exists`,
		`... 2 more distinct lines (2 lines)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("collapseLines =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestExpectedFailureNoteEndsWithPgbenchsLastLine(t *testing.T) {
	res := result{exitErr: errors.New("exit status 2"), logPath: "p.log"}
	for i := range 6 {
		res.stderr = append(res.stderr, fmt.Sprintf("pgbench: error: variant %d: %s", i%5, preparedErr))
	}
	res.stderr = append(res.stderr, "pgbench: error: Run was aborted; the above results are incomplete.")
	note := expectedNote("pgbouncer", row{proto: "prepared", clients: 50}, res)
	for _, want := range []string{
		"2× pgbench: error: variant 0: ",
		"... 2 more distinct lines (2 lines)\nlast line: pgbench: error: Run was aborted; the above results are incomplete.\npgbench exit status 2\n```",
	} {
		if !strings.Contains(note, want) {
			t.Errorf("note lacks %q:\n%s", want, note)
		}
	}
}

func TestReportShowsThePoolersCPUPerTransaction(t *testing.T) {
	withCPU := func(tps, cpu float64) result { r := ok(tps); r.cpuUs = cpu; return r }
	tbl := &table{mode: modeTransaction, poolSize: 10, targets: []string{"pgbouncer", "sidecar"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "simple", clients: 10, res: []result{withCPU(8000, 32.04), withCPU(7000, 41.96)}, unsupported: []bool{false, false}},
		{proto: "simple", clients: 50, res: []result{ok(7000), withCPU(7700, 40)}, unsupported: []bool{false, false}},
	}}
	md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown()
	reportHas(t, md,
		"| protocol | clients | pgbouncer TPS | sidecar TPS | pgbouncer lat ms | sidecar lat ms | pgbouncer CPU µs/tx | sidecar CPU µs/tx | sidecar/pgbouncer |",
		"| simple | 10 | 8000 | 7000 | 1.000 | 1.000 | 32.0 | 42.0 | 0.88 |",
		"| simple | 50 | 7000 | 7700 | 1.000 | 1.000 | – | 40.0 | 1.10 |",
		"CPU µs/tx = the pooler's CPU time",
		// 41.96 / 32.04 = 1.31; the row without PgBouncer's CPU is not judged.
		"Target sidecar CPU per transaction ≤ 1.15× PgBouncer's (simple, extended and prepared rows): **not met** (0 of 1 rows; not met in simple/10 (1.31)).\n",
	)
	tbl.rows[0].res[1].cpuUs = 36.8 // 1.149
	// A new connection's CPU is reported, not judged: its target is its rate.
	tbl.rows = append(tbl.rows, row{proto: protoConnect, clients: 4, res: []result{withCPU(3000, 100), withCPU(3100, 128)}, unsupported: []bool{false, false}})
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(),
		"Target sidecar CPU per transaction ≤ 1.15× PgBouncer's (simple, extended and prepared rows): **met** (1 of 1 rows). New connections are judged by their rate; connect/4 cost the sidecar 1.28× PgBouncer's CPU per connection.\n")
	if got := combineRuns([]result{withCPU(1, 30), withCPU(1, 50), withCPU(1, 34)}); got.cpuUs != 34 {
		t.Errorf("combined CPU = %v, want the median 34", got.cpuUs)
	}
	if n, err := cpuTicks(os.Getpid()); err != nil || n < 0 {
		t.Errorf("cpuTicks(self) = %d, %v", n, err)
	}
}

func TestReportSplitsThePoolersCPUIntoUserAndSystemTime(t *testing.T) {
	withSplit := func(tps, user, sys float64) result {
		r := ok(tps)
		r.cpuUs, r.userUs, r.sysUs = user+sys, user, sys
		return r
	}
	tbl := &table{mode: modeTransaction, poolSize: 10, targets: []string{"pgbouncer", "sidecar"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "extended", clients: 50, res: []result{withSplit(8000, 5.84, 19.55), withSplit(7000, 13.5, 21.66)}, unsupported: []bool{false, false}},
		{proto: "connect", clients: 4, res: []result{ok(3000), withSplit(3100, 50, 120)}, unsupported: []bool{false, false}},
	}}
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(),
		"CPU per transaction in µs, user + system",
		"| extended | 50 | 5.8 + 19.6 | 13.5 + 21.7 |",
		"| connect | 4 | – | 50.0 + 120.0 |",
	)
	tbl.rows = tbl.rows[1:]
	tbl.rows[0].res[1] = ok(3100)
	if md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(); strings.Contains(md, "user + system") {
		t.Errorf("a table without a measured split has a split table:\n%s", md)
	}

	got := combineRuns([]result{withSplit(1, 10, 20), ok(1), withSplit(1, 14, 18), withSplit(1, 12, 25)})
	if got.userUs != 12 || got.sysUs != 20 || got.cpuUs != 32 {
		t.Errorf("combined split = %v + %v of %v, want the medians of the measured runs: 12 + 20 of 32", got.userUs, got.sysUs, got.cpuUs)
	}

	stat := "4242 (postgres: a (b) c) S 4200 4242 4242 0 -1 4194560 1 0 0 0 17 5 0 0 20 0 1 0 100 1000 10"
	if ppid, utime, stime, err := parseStatTimes([]byte(stat)); err != nil || ppid != 4200 || utime != 17 || stime != 5 {
		t.Errorf("parseStatTimes = %d, %d, %d, %v; want 4200, 17, 5", ppid, utime, stime, err)
	}
	// This process: its user time only grows while it computes.
	u1, all1, err := cpuSplit(os.Getpid())
	if err != nil || u1 > all1 {
		t.Fatalf("cpuSplit(self) = %d of %d, %v", u1, all1, err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if u2, all2, err := cpuSplit(os.Getpid()); err != nil || u2 < u1 || all2 < all1 {
			t.Fatalf("cpuSplit(self) went from %d of %d to %d of %d (%v)", u1, all1, u2, all2, err)
		} else if u2 > u1 {
			return
		}
	}
	t.Error("this process's user time did not grow in 5 s of computing")
}

func TestReportAddsUpTheWholeMachinesCPUPerTransaction(t *testing.T) {
	withAll := func(tps, pooler, pg, client float64) result {
		r := ok(tps)
		r.cpuUs, r.pgCPUUs, r.clientUs = pooler, pg, client
		return r
	}
	tbl := &table{mode: modeSession, poolSize: 60, targets: []string{"direct", "pgbouncer", "sidecar"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "extended", clients: 10, res: []result{withAll(9000, 0, 30.04, 12.5), withAll(40000, 9.5, 22.1, 12.0), withAll(38000, 10.2, 22.3, 13.8)}, unsupported: []bool{false, false, false}},
		{proto: "simple", clients: 10, res: []result{ok(9000), withAll(41000, 9.1, 21.0, 11.0), withAll(41000, 9.2, 0, 0)}, unsupported: []bool{false, false, false}},
	}}
	tbl.rows[0].res[2].busy, tbl.rows[0].res[0].busy = 0.876, 0.954
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(),
		"CPU per transaction of the whole machine's work in µs, pooler + PostgreSQL + pgbench = sum",
		"| extended | 10 | – + 30.0 + 12.5 = 42.5 (95 %) | 9.5 + 22.1 + 12.0 = 43.6 | 10.2 + 22.3 + 13.8 = 46.3 (88 %) |",
		"| simple | 10 | – | 9.1 + 21.0 + 11.0 = 41.1 | – |",
	)
	for i := range tbl.rows {
		for j := range tbl.rows[i].res {
			tbl.rows[i].res[j].clientUs = 0
		}
	}
	if md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(); strings.Contains(md, "whole machine") {
		t.Errorf("a table without pgbench's CPU has a whole-machine table:\n%s", md)
	}
	// A TPS miss is split into the machine's work per transaction and how
	// busy the run kept it.
	tx := &table{mode: modeTransaction, poolSize: 10, targets: []string{"pgbouncer", "sidecar"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "extended", clients: 10, res: []result{withAll(42868, 9.5, 30.6, 4.6), withAll(37052, 10.5, 32.0, 4.9)}, unsupported: []bool{false, false}},
	}}
	tx.rows[0].res[0].busy, tx.rows[0].res[1].busy = 0.96, 0.88
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tx}}).markdown(),
		"not met in extended/10 (0.86: the whole machine's CPU per transaction 1.06×, its busy share 0.92×)")
	tx.rows[0].res[1].busy = 0
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tx}}).markdown(), "not met in extended/10 (0.86)")

	busy := func(r result, b float64) result { r.busy = b; return r }
	if got := combineRuns([]result{busy(withAll(1, 9, 20, 12), 0.9), ok(1), busy(withAll(1, 10, 22, 14), 0.8), busy(withAll(1, 11, 21, 13), 0.95)}); got.clientUs != 13 || got.pgCPUUs != 21 || got.busy != 0.9 {
		t.Errorf("combined client CPU, server CPU, share busy = %v, %v, %v; want the medians of the measured runs, 13, 21 and 0.9", got.clientUs, got.pgCPUUs, got.busy)
	}
}

func TestClientCPUComesFromTheExitedChildsResourceUsage(t *testing.T) {
	if _, ok := rusage(nil); ok {
		t.Error("rusage of a process that never started reported usage")
	}
	// A child that computes for a while: its user time is counted.
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	ru, ok := rusage(cmd.ProcessState)
	if !ok || ru.Utime.Nano()+ru.Stime.Nano() <= 0 {
		t.Errorf("rusage of a computing child = %+v, %v; want some CPU time", ru, ok)
	}
}

func TestReportShowsThePoolersContextSwitchesPerTransaction(t *testing.T) {
	withCS := func(tps, vol, invol float64) result {
		r := ok(tps)
		r.switched, r.volCS, r.involCS = true, vol, invol
		return r
	}
	tbl := &table{mode: modeTransaction, poolSize: 10, targets: []string{"pgbouncer", "sidecar"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "extended", clients: 10, res: []result{withCS(8000, 0.104, 0.216), withCS(7000, 0.17, 0.64)}, unsupported: []bool{false, false}},
		{proto: "connect", clients: 4, res: []result{ok(3000), withCS(3100, 2.5, 1.125)}, unsupported: []bool{false, false}},
	}}
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(),
		"Context switches per transaction, voluntary + involuntary",
		"| protocol | clients | pgbouncer | sidecar |",
		"| extended | 10 | 0.10 + 0.22 | 0.17 + 0.64 |",
		"| connect | 4 | – | 2.50 + 1.12 |",
	)
	tbl.rows = tbl.rows[1:]
	tbl.rows[0].res[1] = ok(3100)
	if md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(); strings.Contains(md, "Context switches") {
		t.Errorf("a table without measured switches has a switch table:\n%s", md)
	}

	got := combineRuns([]result{withCS(1, 0.3, 2), ok(1), withCS(1, 0.1, 1), withCS(1, 0.2, 3)})
	if !got.switched || got.volCS != 0.2 || got.involCS != 2 {
		t.Errorf("combined switches = %v %v %v, want the medians of the measured runs, 0.2 and 2", got.switched, got.volCS, got.involCS)
	}

	vol, invol, err := parseSwitches([]byte("Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n"))
	if err != nil || vol != 12 || invol != 3 {
		t.Errorf("parseSwitches = %d, %d, %v", vol, invol, err)
	}
	if _, _, err := parseSwitches([]byte("Name:\tx\nvoluntary_ctxt_switches:\t12\n")); err == nil {
		t.Error("a status without nonvoluntary_ctxt_switches parsed")
	}
	// This process: its switches only grow, and a thread's wait counts.
	v1, i1, err := ctxSwitches(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A thread blocked in the kernel is switched out voluntarily.
	if err := syscall.Nanosleep(&syscall.Timespec{Nsec: 1e6}, nil); err != nil {
		t.Fatal(err)
	}
	v2, i2, err := ctxSwitches(os.Getpid())
	if err != nil || v2 <= v1 || i2 < i1 {
		t.Errorf("switches went from %d+%d to %d+%d (%v)", v1, i1, v2, i2, err)
	}
	if _, _, err := ctxSwitches(0); err == nil {
		t.Error("ctxSwitches(0) succeeded")
	}
}

// reportHas fails t for every want the rendered report md lacks.
func reportHas(t *testing.T, md string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestReportSetsEveryReferenceAgainstPgBouncer(t *testing.T) {
	tbl := &table{mode: modeSession, poolSize: 60, targets: []string{"direct", "pgbouncer", "sidecar", "pgbouncer-aa", "go-pipe", "go-loop"}, loadBefore: -1, loadAfter: -1, rows: []row{
		{proto: "simple", clients: 10, res: []result{ok(2000), ok(1000), ok(900), ok(1100), ok(800), ok(1050)}},
		{proto: "simple", clients: 50, res: []result{ok(2000), ok(1000), ok(1000), ok(870), ok(800), ok(1050)}},
		{proto: "extended", clients: 50, res: []result{ok(2000), ok(1000), ok(1000), ok(999.6), ok(800), ok(1050)}},
	}}
	md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown()
	reportHas(t, md,
		"| sidecar/pgbouncer | pgbouncer-aa/pgbouncer | go-pipe/pgbouncer | go-loop/pgbouncer | sidecar/direct |",
		"| 0.90 | 1.10 | 0.80 | 1.05 | 0.45 |",
		"not met in simple/10 (0.90)",
		"Control: a second PgBouncer configured like the first measured 0.87–1.10 of its TPS (1 of 3 rows below 1.00).",
		"The Go reference relays (go-pipe, go-loop) ran with `GOMAXPROCS=1`, the thread count the sidecar starts with (it adds threads while its goroutines wait for one).",
	)
	// With CPU measured, the control's CPU band is given as well.
	tbl.rows[0].res[1].cpuUs, tbl.rows[0].res[3].cpuUs = 40, 36
	tbl.rows[1].res[1].cpuUs, tbl.rows[1].res[3].cpuUs = 40, 46
	reportHas(t, (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(),
		"measured 0.87–1.10 of its TPS (1 of 3 rows below 1.00), and 0.90–1.15 of its CPU per transaction.")
	two := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}, sidecarEnv: map[string]string{"GOMAXPROCS": "2"}}).markdown()
	reportHas(t, two, "ran with `GOMAXPROCS=2`, the sidecar's thread count.")
	if md := (&report{cpus: 2, skipRSS: true, tables: []*table{sessionTable(row{proto: "simple", clients: 1, res: []result{ok(1), ok(1), ok(1)}})}}).markdown(); strings.Contains(md, "reference relays") {
		t.Errorf("a report without the Go relays mentions them:\n%s", md)
	}
	if note := sessionTable(row{proto: "simple", clients: 1, res: []result{ok(1), ok(1), ok(1)}}).controlNote(); note != "" {
		t.Errorf("a table without the control has a control note: %q", note)
	}
}

func TestVerdictsNameTheRowsTheSecondPgBouncerMissesToo(t *testing.T) {
	withCPU := func(tps, cpu float64) result { r := ok(tps); r.cpuUs = cpu; return r }
	// Rows: pgbouncer, sidecar, pgbouncer-aa.
	tbl := &table{mode: modeSession, poolSize: 60, targets: []string{"pgbouncer", "sidecar", "pgbouncer-aa"}, loadBefore: -1, loadAfter: -1, rows: []row{
		// The sidecar misses both targets; so does the twin.
		{proto: "simple", clients: 10, res: []result{withCPU(1000, 40), withCPU(900, 48), withCPU(930, 47)}},
		// The sidecar misses both; the twin meets both (0.95 and 1.15 are met).
		{proto: "extended", clients: 10, res: []result{withCPU(1000, 40), withCPU(940, 47), withCPU(950, 46)}},
		// The sidecar meets both; the twin's miss is not listed.
		{proto: "prepared", clients: 10, res: []result{withCPU(1000, 40), withCPU(1000, 40), withCPU(800, 60)}},
	}}
	md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown()
	reportHas(t, md,
		"Target sidecar TPS ≥ 0.95× PgBouncer TPS in every row: **not met** (1 of 3 rows); not met in simple/10 (0.90), extended/10 (0.94); of these, the second PgBouncer, configured like the first, misses it too against the first in simple/10 (0.93).\n",
		"**not met** (1 of 3 rows; not met in simple/10 (1.20), extended/10 (1.18); of these, the second PgBouncer, configured like the first, misses it too against the first in simple/10 (1.18)).",
	)
	// Without the control there is nothing to say of it.
	tbl.targets = tbl.targets[:2]
	for i := range tbl.rows {
		tbl.rows[i].res = tbl.rows[i].res[:2]
	}
	if md := (&report{cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown(); strings.Contains(md, "second PgBouncer") {
		t.Errorf("a report without the control speaks of it:\n%s", md)
	}
}

func TestRoundsRotateTheTargetsSoEachTakesEveryPlace(t *testing.T) {
	for _, n := range []int{3, 4, 6} {
		each := make([]int, n) // every target once: 0 … n-1
		for j := range each {
			each[j] = j
		}
		first := map[int]bool{}
		places := make([]map[int]bool, n) // per target, the places it took
		for j := range places {
			places[j] = map[int]bool{}
		}
		for shift := range n {
			order := roundOrder(n, shift)
			if s := slices.Sorted(slices.Values(order)); !slices.Equal(s, each) {
				t.Fatalf("%d targets, round %d runs %v, not each target once", n, shift, order)
			}
			first[order[0]] = true
			for k, j := range order {
				places[j][k] = true
			}
		}
		if len(first) != n {
			t.Errorf("%d targets: %d rounds started with only %v", n, n, first)
		}
		if n%2 == 0 {
			for j, p := range places {
				if len(p) != n {
					t.Errorf("%d targets: target %d took places %v in %d rounds, not every place", n, j, p, n)
				}
			}
		}
	}
}

func TestConsecutiveRoundsGiveATargetDifferentPredecessors(t *testing.T) {
	// Three rounds of a row (make bench's -repeat 3), whatever row they
	// start at: no target runs just after the same target (or first) in
	// all three. With every round going up the list, PgBouncer would run
	// just after the run straight to PostgreSQL in every round.
	for _, n := range []int{4, 5, 6, 7} {
		for row := range n {
			before := make([]map[int]bool, n) // per target: the target run just before it, -1 when it ran first
			for j := range before {
				before[j] = map[int]bool{}
			}
			for round := range 3 {
				order := roundOrder(n, row+round)
				before[order[0]][-1] = true
				for k := 1; k < n; k++ {
					before[order[k]][order[k-1]] = true
				}
			}
			for j, b := range before {
				if len(b) < 2 {
					t.Errorf("%d targets, row %d: target %d ran after only %v in three rounds", n, row, j, b)
				}
			}
		}
	}
	if got, want := roundOrder(4, 1), []int{1, 0, 3, 2}; !slices.Equal(got, want) {
		t.Errorf("roundOrder(4, 1) = %v, want %v", got, want)
	}
}

func TestMemoryTableJudgesTheSidecarAgainstItsTargets(t *testing.T) {
	ms := []memTarget{
		{name: colSidecar, startKB: 19 * 1024, points: []memPoint{
			{1000, 1000, 19*1024 + 5000, false}, {1000, 1000, 19*1024 + 9000, true}, {10000, 10000, 19*1024 + 80000, true}}},
		{name: colBouncer, startKB: 4 * 1024, points: []memPoint{
			{1000, 1000, 4*1024 + 5000, false}, {1000, 1000, 4*1024 + 5000, true}, {10000, 9990, 4*1024 + 50000, true}},
			note: "only 9990 of 10000 sessions reached ReadyForQuery"},
	}
	var b strings.Builder
	writeMemory(&b, ms)
	out := b.String()
	for _, want := range []string{
		"| RSS at start | 19.0 MB | 4.0 MB | 4.8× | ≤ 20 MB: **met** |",
		"| RSS per idle client (1,000 clients, startup only) | 5.0 KB | 5.0 KB | 1.0× |  |",
		"| RSS per idle client (1,000 clients, after `SELECT 1`) | 9.0 KB | 5.0 KB | 1.8× | ≤ 8 KB: **not met** |",
		"| RSS per idle client (10,000 clients, after `SELECT 1`) | 8.0 KB | 5.0 KB | 1.6× |  |",
		"| RSS with 10,000 idle clients (after `SELECT 1`) | 97.1 MB | 52.8 MB | 1.8× | ≤ 100 MB: **met** |",
		"pgbouncer: only 9990 of 10000 sessions reached ReadyForQuery.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("memory table lacks %q:\n%s", want, out)
		}
	}
}

func TestMemoryRoundsAreCombinedIntoMediansAndSetAgainstTheSecondPgBouncer(t *testing.T) {
	const k = 1024
	target := func(name string, startMB, perClientKB int64, opened int, note string) memTarget {
		return memTarget{name: name, startKB: startMB * k, note: note, points: []memPoint{
			{1000, min(opened, 1000), startMB*k + 1000*perClientKB, false},
			{1000, min(opened, 1000), startMB*k + 1000*perClientKB, true},
			{10000, opened, startMB*k + 10000*perClientKB, true}}}
	}
	side := combineMemory([]memTarget{
		target(colSidecar, 21, 7, 10000, ""), target(colSidecar, 19, 5, 10000, ""), target(colSidecar, 20, 6, 9990, "only 9990 of 10000 sessions reached ReadyForQuery")})
	if side.rounds != 3 || side.startKB != 20*k || side.startSpreadKB != 2*k {
		t.Fatalf("combined start %d KB (spread %d) over %d rounds, want the median 20 MB, 2 MB, 3", side.startKB, side.startSpreadKB, side.rounds)
	}
	if p := side.points[2]; p.rssKB != 20*k+60000 || p.opened != 9990 || p.wanted != 10000 || !p.queried {
		t.Errorf("combined last reading %+v, want the median RSS and the fewest clients opened", p)
	}
	if side.note != "round 3: only 9990 of 10000 sessions reached ReadyForQuery" {
		t.Errorf("note %q", side.note)
	}
	one := target(colBouncer, 4, 1, 10000, "")
	if got := combineMemory([]memTarget{one}); got.rounds != 0 || got.startKB != one.startKB {
		t.Errorf("a single round changed: %+v", got)
	}
	bouncer := combineMemory([]memTarget{one, target(colBouncer, 4, 1, 10000, ""), target(colBouncer, 4, 1, 10000, "")})
	aa := combineMemory([]memTarget{target(colBouncerAA, 5, 1, 10000, ""), target(colBouncerAA, 5, 1, 10000, ""), target(colBouncerAA, 4, 1, 10000, "")})

	var b strings.Builder
	writeMemory(&b, []memTarget{side, bouncer, aa})
	reportHas(t, b.String(),
		"Every figure is the median of 3 rounds",
		"| figure | sidecar | pgbouncer | pgbouncer-aa | sidecar/pgbouncer | pgbouncer-aa/pgbouncer | target (sidecar) |",
		"| RSS at start | 20.0 MB | 4.0 MB | 5.0 MB | 5.0× | 1.2× | ≤ 20 MB: **met** |",
		// 9990 clients opened of 10,000: the target is not judged met.
		"| RSS with 10,000 idle clients (after `SELECT 1`) | 78.6 MB | 13.8 MB | 14.8 MB | 5.7× | 1.1× | ≤ 100 MB: **not met** |",
		"Control: a second PgBouncer configured like the first measured 1.00–1.25 of its figures",
		"RSS at start, range of the rounds: sidecar 2.0 MB, pgbouncer 0.0 MB, pgbouncer-aa 1.0 MB.",
		"sidecar: round 3: only 9990 of 10000 sessions reached ReadyForQuery.",
	)
}

func TestSidecarBNeedsAnExistingBinary(t *testing.T) {
	o, err := parseFlags([]string{"-sidecar-b", "/nonexistent/brownie-sidecar"}, io.Discard)
	if err != nil || o.sidecarB != "/nonexistent/brownie-sidecar" {
		t.Fatalf("parseFlags(-sidecar-b) = %q, %v", o.sidecarB, err)
	}
	o.modes = nil // no tool is needed for the missing binary to be reported
	_, err = newBench(o, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "-sidecar-b binary /nonexistent/brownie-sidecar not found") {
		t.Fatalf("newBench with a missing -sidecar-b binary: %v", err)
	}
}

// go-txloop in the transaction table: set against PgBouncer like the
// sidecar, its prepared row an expected failure of its own, and the header
// names it among the Go relays that ran.
func TestTheTransactionTableSetsTheGoTransactionRelayAgainstPgBouncer(t *testing.T) {
	tbl := txnTable(6050)
	tbl.targets = append(tbl.targets, refTxLoop)
	for i := range tbl.rows {
		r := &tbl.rows[i]
		if r.proto == "prepared" {
			failed := r.res[0]
			failed.logPath = "txn-prepared-c50-go-txloop.log"
			r.res, r.unsupported = append(r.res, failed), append(r.unsupported, true)
			continue
		}
		r.res, r.unsupported = append(r.res, ok(r.res[0].tps*0.9)), append(r.unsupported, false)
	}
	md := (&report{duration: 5 * time.Second, scale: 10, cpus: 2, skipRSS: true, tables: []*table{tbl}}).markdown()
	reportHas(t, md,
		"The Go reference relays (go-txloop) ran with `GOMAXPROCS=1`, the thread count the sidecar starts with (it adds threads while its goroutines wait for one).",
		"| sidecar/pgbouncer | go-txloop/pgbouncer |",
		"| simple | 10 | 8000 | 8800 | 7200 |",
		"† go-txloop, prepared/50: failed as expected: go-txloop has no protocol-level prepared statements in transaction mode",
		"† pgbouncer, prepared/50: failed as expected: PgBouncer 1.18 has no protocol-level prepared statements in transaction mode",
		"(apart from the 2 expected failure(s) marked †)",
	)
}
