package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

var crashSeed = flag.Uint64("crash.seed", 0, "seed of the kill times of TestSidecarKilledDuringCommits… (0: from the clock)")

const (
	// crashTrials sidecars are killed, each at a random moment.
	crashTrials = 24
	// crashClients commit transactions at once, so that at any moment
	// some are in each phase of their commit.
	crashClients = 8
	// crashIDBase is the first transaction id; the tables hold nothing at
	// or above it before the test.
	crashIDBase = 1_000_000
	// A sidecar is killed this long after its clients are under way.
	killAfterMin = 5 * time.Millisecond
	killAfterMax = 200 * time.Millisecond
)

// TestSidecarKilledDuringCommitsLeavesEveryTransactionWholeOrAbsent kills
// the sidecar binary with SIGKILL at random moments while clients commit
// transactions that write a row on each shard and a row of a replicated
// table (so both shards' parts commit in two phases, shard-0 the anchor),
// restarting it after each kill. Once the last restarted sidecar's
// recovery has finished what the kills left prepared, every transaction is
// on every shard or on none; one whose COMMIT was acknowledged is
// everywhere, one whose COMMIT was never sent or was answered with an
// error nowhere; the replicated table is the same on both shards; nothing
// is left prepared and the decision rows are deleted. At least one kill
// must have left prepared parts behind, or the recovery was not tested.
func TestSidecarKilledDuringCommitsLeavesEveryTransactionWholeOrAbsent(t *testing.T) {
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun the same kill times with -crash.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	start := time.Now()
	binary := buildSidecar(t) // builds while the clusters start
	e, env := startCrashCluster(t)
	clusters := time.Since(start)
	bin := binary()
	t.Logf("setup: clusters up in %s, sidecar built in %s", clusters.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	c := &crashTest{t: t, e: e, w: watchPrimaries(t, e.srv), parts: newPartStates()}
	c.a, c.b = e.teamOn(t, "shard-0"), e.teamOn(t, "shard-1")
	t.Cleanup(func() {
		if t.Failed() {
			for i, p := range c.runs {
				if lines := p.problems(); lines != "" {
					t.Logf("sidecar run %d warnings and errors:\n%s", i, lines)
				}
			}
		}
	})

	began := time.Now()
	var nextID atomic.Int64
	nextID.Store(crashIDBase - 1)
	leaving := 0 // trials whose kill left a prepared part
	var lastKill time.Time
	for trial := range crashTrials {
		p := startSidecarProcess(t, bin, env)
		c.runs = append(c.runs, p)
		conns := make([]*pgx.Conn, crashClients)
		for i := range conns {
			conns[i] = p.connect(t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		results := make(chan []txRecord, len(conns))
		warm := make(chan struct{}, len(conns))
		for _, conn := range conns {
			go func() { results <- commitUntilLost(ctx, conn, c.a, c.b, &nextID, trial, warm) }()
		}
		// The kill clock starts once every client has finished a first
		// transaction: the sidecar's first connections to the shards take
		// longer (0.2-1s on two cores) than the whole kill window.
		for range conns {
			select {
			case <-warm:
			case <-time.After(10 * time.Second):
				t.Fatalf("trial %d: a client's first transaction took over 10s:\n%s", trial, p.problems())
			}
		}
		// The kill's moment is the trial's random variable, not a wait
		// for some state.
		delay := killAfterMin + time.Duration(rng.Int64N(int64(killAfterMax-killAfterMin)))
		time.Sleep(delay)
		p.kill(t)
		lastKill = time.Now()
		var recs []txRecord
		for range conns {
			recs = append(recs, <-results...)
		}
		if ctx.Err() != nil {
			t.Fatalf("trial %d: clients were still running 30s after the sidecar was killed", trial)
		}
		cancel()
		for _, conn := range conns {
			_ = conn.Close(context.Background())
		}
		c.records = append(c.records, recs...)
		n := c.parts.add(t, c.w, trial)
		if n > 0 {
			leaving++
		}
		acked := 0
		for _, r := range recs {
			if r.outcome == acknowledged {
				acked++
			}
		}
		t.Logf("trial %d: killed %s after warm-up: %d transactions, %d acknowledged, %d left prepared",
			trial, delay.Round(time.Millisecond), len(recs), acked, n)
	}

	// The last restart: its recovery finishes what the last kills left.
	final := startSidecarProcess(t, bin, env)
	c.runs = append(c.runs, final)
	restarted := time.Now()
	settled := c.waitNonePrepared(15 * time.Second)
	t.Logf("recovery: nothing prepared %s after the last restart (%s after the last kill)",
		settled.Sub(restarted).Round(time.Millisecond), settled.Sub(lastKill).Round(time.Millisecond))

	sum := c.checkWholeOrAbsent()
	c.sameReplicated()
	waitFor(t, 10*time.Second, "decision rows deleted by the recovery", func() bool {
		return c.w.text(t, 0, "SELECT count(*)::text FROM brownie_sidecar.commit_log") == "0" &&
			c.w.text(t, 1, "SELECT count(*)::text FROM brownie_sidecar.commit_log") == "0"
	})
	if code := final.terminate(t); code != 0 {
		t.Errorf("the last sidecar exited with %d after SIGTERM, want 0", code)
	}

	recovered := map[string]int{}
	for _, p := range c.runs {
		for action, n := range p.recoveries() {
			recovered[action] += n
		}
	}
	ps := c.parts
	t.Logf("%d trials in %s: %d transactions, %d commits acknowledged, %d unanswered (%d found committed, %d not), %d never sent COMMIT, %d refused",
		crashTrials, time.Since(began).Round(time.Millisecond), len(c.records), sum.acked, sum.unanswered, sum.unansweredThere, sum.unanswered-sum.unansweredThere, sum.notSent, sum.refused)
	t.Logf("%d of %d trials left prepared parts: %d transactions prepared on both shards, %d on the anchor only, %d on shard-1 only with the anchor committed, %d on shard-1 only without a decision; the recovery committed %d parts and rolled back %d",
		leaving, crashTrials, ps.both, ps.anchorOnly, ps.decided, ps.undecided, recovered["committed"], recovered["rolled_back"])
	if ps.undecided > 0 {
		t.Errorf("%d transactions were prepared on shard-1 with their anchor (shard-0) neither prepared nor committed: a shard prepared before the anchor", ps.undecided)
	}
	if leaving == 0 {
		t.Errorf("no kill in %d trials left a prepared part behind: the recovery was not exercised", crashTrials)
	}
	if sum.acked == 0 {
		t.Errorf("no commit was acknowledged in %d trials", crashTrials)
	}
}

// crashTest is the state of one run of the crash test.
type crashTest struct {
	t       *testing.T
	e       *routingEnv
	w       *primaries
	a, b    pgtype.UUID // teams on shard-0 and shard-1
	records []txRecord
	runs    []*sidecarProcess
	parts   *partStates
}

// txOutcome is what a client saw of its transaction.
type txOutcome int

const (
	// notSent: a statement before COMMIT failed; it must be nowhere.
	notSent txOutcome = iota
	// unanswered: COMMIT was sent (or its sending failed) and no answer
	// came; it may be everywhere or nowhere, but whole.
	unanswered
	// acknowledged: COMMIT succeeded; it must be everywhere.
	acknowledged
	// refused: COMMIT got an error from the sidecar, which means rolled
	// back; it must be nowhere.
	refused
)

func (o txOutcome) String() string {
	return [...]string{"COMMIT never sent", "COMMIT unanswered", "COMMIT acknowledged", "COMMIT refused"}[o]
}

// txRecord is one transaction a client ran.
type txRecord struct {
	id      int64
	trial   int
	outcome txOutcome
	err     error
}

// commitUntilLost runs transactions on conn until its connection is lost
// (or ctx ends): each writes id on a's shard, on b's shard and into the
// replicated table dir, in an order that depends on id, then commits. It
// signals warm once its first transaction has ended (warm must have room).
func commitUntilLost(ctx context.Context, conn *pgx.Conn, a, b pgtype.UUID, ids *atomic.Int64, trial int, warm chan<- struct{}) []txRecord {
	var recs []txRecord
	for ctx.Err() == nil {
		id := ids.Add(1)
		outcome, err := crossShardTx(ctx, conn, a, b, id, trial)
		recs = append(recs, txRecord{id: id, trial: trial, outcome: outcome, err: err})
		if len(recs) == 1 {
			warm <- struct{}{}
		}
		if err != nil && (conn.IsClosed() || pgErrCode(err) == "") {
			return recs
		}
	}
	return recs
}

// crossShardTx runs one transaction of commitUntilLost.
func crossShardTx(ctx context.Context, conn *pgx.Conn, a, b pgtype.UUID, id int64, trial int) (txOutcome, error) {
	stmts := []struct {
		sql string
		arg any
	}{
		{"INSERT INTO items (team_id, id, note) VALUES ($1, $2, 'crash')", a},
		{"INSERT INTO items (team_id, id, note) VALUES ($1, $2, 'crash')", b},
		{"INSERT INTO dir (id, name) VALUES ($2, $1)", "trial-" + strconv.Itoa(trial)},
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return notSent, err
	}
	for i := range stmts {
		s := stmts[(int(id)+i)%len(stmts)]
		if _, err := tx.Exec(ctx, s.sql, s.arg, id); err != nil {
			_ = tx.Rollback(ctx)
			return notSent, err
		}
	}
	err = tx.Commit(ctx)
	switch {
	case err == nil:
		return acknowledged, nil
	case errors.Is(err, pgx.ErrTxCommitRollback), pgErrCode(err) != "" && !strings.HasPrefix(pgErrCode(err), "08"):
		return refused, err
	}
	return unanswered, err
}

// partStates records the transactions the kills left prepared.
type partStates struct {
	left map[string]string    // gid → which kill left it prepared, and on which shards
	xids [2]map[string]string // per shard: the xid of a part seen prepared or decided (its rows' xmin) → gid

	both       int // prepared on both shards: killed before the decision
	anchorOnly int // prepared on shard-0 only: killed between the PREPAREs
	decided    int // prepared on shard-1 only, the anchor committed: killed between the COMMIT PREPAREDs
	undecided  int // prepared on shard-1 only, the anchor not committed
}

func newPartStates() *partStates {
	return &partStates{left: map[string]string{}, xids: [2]map[string]string{{}, {}}}
}

// add waits until the killed sidecar's connections are gone from both
// primaries (a statement it sent just before dying may still be running
// there), then records the prepared transactions not seen after an
// earlier kill, and returns how many there were.
func (ps *partStates) add(t *testing.T, w *primaries, trial int) int {
	t.Helper()
	const q = `SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())
	 || ';' || coalesce((SELECT string_agg(gid || ' ' || transaction, ',') FROM pg_prepared_xacts), '')`
	var gids [2][]string
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 2; {
		n, list, _ := strings.Cut(w.text(t, i, q), ";")
		if n != "0" {
			if time.Now().After(deadline) {
				t.Fatalf("shard-%d still has %s client connections 10s after the sidecar was killed", i, n)
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		for _, part := range strings.Split(list, ",") {
			if gid, xid, ok := strings.Cut(part, " "); ok {
				gids[i] = append(gids[i], gid)
				ps.xids[i][xid] = gid
			}
		}
		i++
	}
	fresh := 0
	var only1 []string
	for _, g := range gids[0] {
		if _, ok := ps.left[g]; ok {
			continue
		}
		fresh++
		if slices.Contains(gids[1], g) {
			ps.both++
			ps.left[g] = fmt.Sprintf("the kill of trial %d left it prepared on both shards", trial)
		} else {
			ps.anchorOnly++
			ps.left[g] = fmt.Sprintf("the kill of trial %d left it prepared on shard-0 only", trial)
		}
	}
	for _, g := range gids[1] {
		if _, ok := ps.left[g]; !ok && !slices.Contains(gids[0], g) {
			fresh++
			only1 = append(only1, g)
		}
	}
	if len(only1) > 0 {
		// The decision row was inserted by the anchor's part: its xmin is
		// that part's xid.
		decided := map[string]bool{}
		rows := w.text(t, 0, "SELECT coalesce(string_agg(gid || ' ' || xmin, ','), '') FROM brownie_sidecar.commit_log WHERE gid = ANY($1)", only1)
		for _, row := range strings.Split(rows, ",") {
			if gid, xid, ok := strings.Cut(row, " "); ok {
				decided[gid] = true
				ps.xids[0][xid] = gid
			}
		}
		for _, g := range only1 {
			if decided[g] {
				ps.decided++
				ps.left[g] = fmt.Sprintf("the kill of trial %d left it prepared on shard-1 only, committed on shard-0", trial)
			} else {
				ps.undecided++
				ps.left[g] = fmt.Sprintf("the kill of trial %d left it prepared on shard-1 only, with no decision on shard-0", trial)
			}
		}
	}
	return fresh
}

// waitNonePrepared polls both primaries until neither holds a prepared
// transaction and returns when that was seen; after within it fails the
// test naming what is left.
func (c *crashTest) waitNonePrepared(within time.Duration) time.Time {
	t := c.t
	t.Helper()
	const q = "SELECT coalesce(string_agg(gid || ' (prepared ' || round(extract(epoch FROM now() - prepared)::numeric, 1) || 's ago)', ', '), '') FROM pg_prepared_xacts"
	deadline := time.Now().Add(within)
	for {
		p0, p1 := c.w.text(t, 0, q), c.w.text(t, 1, q)
		if p0 == "" && p1 == "" {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("prepared transactions left %s after the last restart:\nshard-0: %s\nshard-1: %s", within, p0, p1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// crashSummary counts the transactions by outcome.
type crashSummary struct {
	acked, unanswered, unansweredThere, notSent, refused int
}

// place is where one of a transaction's four rows goes.
type place struct {
	name  string
	shard int
	rows  map[int64][]string // transaction id → xmin of each row with that id
}

// checkWholeOrAbsent checks every transaction's four rows (items on
// shard-0 and on shard-1, dir on both): all there or none, there when
// acknowledged, absent when COMMIT was never sent or was refused; and that
// no row belongs to no transaction. It reads the tables as the superuser.
func (c *crashTest) checkWholeOrAbsent() crashSummary {
	t := c.t
	t.Helper()
	rows := func(shard int, sql string) map[int64][]string {
		t.Helper()
		out := map[int64][]string{}
		for _, line := range strings.Fields(c.e.direct(t, "shard-"+strconv.Itoa(shard), sql)) {
			f, xmin, _ := strings.Cut(line, "|")
			id, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatalf("shard-%d: %s: %q is not an id", shard, sql, line)
			}
			out[id] = append(out[id], xmin)
		}
		return out
	}
	base := strconv.Itoa(crashIDBase)
	a, b := uuidText(c.a), uuidText(c.b)
	places := []place{
		{"items on shard-0", 0, rows(0, "SELECT id, xmin FROM items WHERE id >= "+base+" AND team_id = '"+a+"'")},
		{"items on shard-1", 1, rows(1, "SELECT id, xmin FROM items WHERE id >= "+base+" AND team_id = '"+b+"'")},
		{"dir on shard-0", 0, rows(0, "SELECT id, xmin FROM dir WHERE id >= "+base)},
		{"dir on shard-1", 1, rows(1, "SELECT id, xmin FROM dir WHERE id >= "+base)},
	}
	for shard, want := range []string{a, b} {
		if n := c.e.direct(t, "shard-"+strconv.Itoa(shard), "SELECT count(*) FROM items WHERE id >= "+base+" AND team_id <> '"+want+"'"); n != "0" {
			t.Errorf("shard-%d holds %s items of a team placed elsewhere", shard, n)
		}
	}

	var sum crashSummary
	failures := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if failures++; failures <= 20 {
			t.Errorf(format, args...)
		}
	}
	attempted := map[int64]bool{}
	for _, r := range c.records {
		attempted[r.id] = true
		var in, out []string
		for _, p := range places {
			switch n := len(p.rows[r.id]); {
			case n == 0:
				out = append(out, p.name)
			case n > 1:
				fail("transaction %d (trial %d): %d rows in %s, want at most 1", r.id, r.trial, n, p.name)
				fallthrough
			default:
				in = append(in, p.name)
			}
		}
		there := len(out) == 0
		switch r.outcome {
		case acknowledged:
			sum.acked++
		case unanswered:
			sum.unanswered++
			if there {
				sum.unansweredThere++
			}
		case notSent:
			sum.notSent++
			if pgErrCode(r.err) != "" {
				fail("transaction %d (trial %d): a statement failed while the sidecar ran: %v", r.id, r.trial, r.err)
			}
		case refused:
			sum.refused++
			// 40000 is the sidecar's answer when a recovery rolled back a
			// part prepared longer than TWO_PHASE_TIMEOUT (2s): possible
			// on a machine stalled that long, and rolled back; any other
			// refusal is unexplained.
			if pgErrCode(r.err) != "40000" {
				fail("transaction %d (trial %d): the sidecar refused its COMMIT while running: %v", r.id, r.trial, r.err)
			}
		}
		switch {
		case len(in) > 0 && len(out) > 0:
			fail("transaction %d (trial %d, %s: %v) is half committed: in %s; not in %s%s",
				r.id, r.trial, r.outcome, r.err, strings.Join(in, ", "), strings.Join(out, ", "), c.explain(r.id, places))
		case r.outcome == acknowledged && !there:
			fail("transaction %d (trial %d) is lost: its COMMIT was acknowledged but no shard holds it", r.id, r.trial)
		case (r.outcome == notSent || r.outcome == refused) && there:
			fail("transaction %d (trial %d, %s: %v) is committed%s", r.id, r.trial, r.outcome, r.err, c.explain(r.id, places))
		}
	}
	for _, p := range places {
		for id := range p.rows {
			if !attempted[id] {
				fail("%s holds id %d, which no client wrote", p.name, id)
			}
		}
	}
	if failures > 20 {
		t.Errorf("… and %d more failures", failures-20)
	}
	return sum
}

// explain names the prepared transactions whose rows of transaction id
// were found (by the rows' xmin), what the kills left of them, and the
// sidecar log lines naming them.
func (c *crashTest) explain(id int64, places []place) string {
	var s strings.Builder
	seen := map[string]bool{}
	for _, p := range places {
		for _, xmin := range p.rows[id] {
			gid := c.parts.xids[p.shard][xmin]
			if gid == "" {
				fmt.Fprintf(&s, "\n  its row in %s (xmin %s) is from a transaction no kill left prepared", p.name, xmin)
				continue
			}
			fmt.Fprintf(&s, "\n  its row in %s is from %s: %s", p.name, gid, c.parts.left[gid])
			if seen[gid] {
				continue
			}
			seen[gid] = true
			for i, run := range c.runs {
				for _, line := range strings.Split(run.logs.String(), "\n") {
					if strings.Contains(line, gid) {
						fmt.Fprintf(&s, "\n    sidecar run %d: %s", i, line)
					}
				}
			}
		}
	}
	return s.String()
}

// sameReplicated checks that the replicated table dir holds the same rows
// on both shards.
func (c *crashTest) sameReplicated() {
	t := c.t
	t.Helper()
	const q = "SELECT coalesce(string_agg(id || '=' || name, E'\\n' ORDER BY id), '') FROM dir"
	if d0, d1 := c.e.direct(t, "shard-0", q), c.e.direct(t, "shard-1", q); d0 != d1 {
		t.Errorf("replicated table dir differs between the shards:\n%s", firstLineDifference("shard-0", d0, "shard-1", d1))
	}
}

// primaries are the test's own connections to the shard primaries (as the
// sidecar's role, with its client certificate), for the checks made after
// every kill: faster than psql.
type primaries struct {
	conns [2]*pgx.Conn
}

// watchPrimaries connects to both primaries and closes the connections
// when the test ends.
func watchPrimaries(t *testing.T, srv *pgtest.Server) *primaries {
	t.Helper()
	w := &primaries{}
	for i, sh := range srv.Shards {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := pgx.Connect(ctx, srv.DSN(sh.Primary, "brownie_metadata"))
		cancel()
		if err != nil {
			t.Fatalf("connect to shard-%d's primary: %v", i, err)
		}
		w.conns[i] = c
		t.Cleanup(func() { _ = c.Close(context.Background()) })
	}
	return w
}

// text runs a query answering one text value on shard-i's primary.
func (w *primaries) text(t *testing.T, i int, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s string
	if err := w.conns[i].QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("shard-%d: %s: %v", i, sql, err)
	}
	return s
}

// startCrashCluster starts two shard primaries with the routing tests'
// schema (no replicas: only primaries take part in commits), writes a
// shard map with items sharded by team_id and dir replicated, and returns
// the environment for it (its sc is nil) and the sidecars' environment:
// startRouting's, with the two-phase timeout 2s and recovery every 200ms.
func startCrashCluster(t *testing.T) (*routingEnv, map[string]string) {
	t.Helper()
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Shards: 2})
	for i, sh := range srv.Shards {
		if _, err := sh.Primary.Exec(context.Background(), "brownie_metadata", routingSchema); err != nil {
			t.Fatalf("shard-%d schema: %v", i, err)
		}
	}
	text := fmt.Sprintf(`key_type: uuid
unlisted_tables: reject
shards:
  - name: shard-0
    primary: 127.0.0.1:%d
  - name: shard-1
    primary: 127.0.0.1:%d
tables:
  items: {sharded_by: team_id, keyless: reject}
  dir: replicated
`, srv.Shards[0].Primary.Port(), srv.Shards[1].Primary.Port())
	e := &routingEnv{srv: srv, mapFile: filepath.Join(t.TempDir(), "shardmap.yaml")}
	writeFileAtomic(t, e.mapFile, text)
	e.rt = testRouter(t, text)
	return e, map[string]string{
		"DB_HOST":                     "localhost",
		"DB_PORT":                     strconv.Itoa(srv.Primary.Port()),
		"LOCAL_CERT_DIR":              srv.CertDir,
		"LISTEN_ADDR":                 "127.0.0.1:0",
		"ADMIN_ADDR":                  "127.0.0.1:0",
		"LOG_LEVEL":                   "info",
		"SHUTDOWN_TIMEOUT":            "5s",
		"POOL_ACQUIRE_TIMEOUT":        "5s",
		"SHARD_MAP_FILE":              e.mapFile,
		"POOL_MODE":                   "transaction",
		"POOL_SIZE":                   strconv.Itoa(crashClients + 2),
		"POOL_CHECK_DELAY":            "0",
		"HEALTH_CHECK_INTERVAL":       "100ms",
		"HEALTH_CHECK_TIMEOUT":        "2s",
		"TWO_PHASE_TIMEOUT":           "2s",
		"TWO_PHASE_RECOVERY_INTERVAL": "200ms",
	}
}

// buildSidecar starts building the sidecar binary in the background (so
// that it overlaps the clusters' start) and returns a function that waits
// for the build and returns the binary's path. The build is cancelled and
// waited for when the test ends.
func buildSidecar(t *testing.T) func() string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building the sidecar needs the go command: %v", err)
	}
	mod, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(mod)), "go.mod") {
		t.Fatalf("finding the module root: %q, %v", mod, err)
	}
	bin := filepath.Join(t.TempDir(), "brownie-sidecar")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, goBin, "build", "-ldflags=-s -w", "-o", bin, "./cmd/brownie-sidecar")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	out := &pgtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("go build: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var once sync.Once
	var buildErr error
	wait := func() error {
		once.Do(func() { buildErr = <-done })
		return buildErr
	}
	t.Cleanup(func() {
		cancel()
		_ = wait()
	})
	return func() string {
		t.Helper()
		if err := wait(); err != nil {
			t.Fatalf("go build ./cmd/brownie-sidecar: %v\n%s", err, out)
		}
		return bin
	}
}

// sidecarProcess is the sidecar binary running as a child process, so that
// a test can kill it with SIGKILL.
type sidecarProcess struct {
	cmd     *exec.Cmd
	logs    *lockedBuffer
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // set before exited is closed
	addr    string        // client listener
	admin   string        // admin base URL
	http    *http.Client
}

// startSidecarProcess runs bin with exactly env as its environment, waits
// until it listens and /ready answers 200, and stops it (SIGTERM, then
// SIGKILL) when the test ends if it still runs.
func startSidecarProcess(t *testing.T, bin string, env map[string]string) *sidecarProcess {
	t.Helper()
	p := &sidecarProcess{
		logs:   &lockedBuffer{},
		exited: make(chan struct{}),
		http:   &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	p.cmd = exec.Command(bin)
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.terminate(t) })

	deadline := time.Now().Add(30 * time.Second)
	for p.addr == "" {
		select {
		case <-p.exited:
			t.Fatalf("sidecar exited during startup (%v):\n%s", p.waitErr, p.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar did not start within 30s:\n%s", p.logs)
		}
		time.Sleep(5 * time.Millisecond)
		p.addr, p.admin = startedAddrs(p.logs.String())
	}
	for {
		resp, err := p.http.Get(p.admin + "/ready")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready within 30s (%v):\n%s", err, p.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startedAddrs finds the client and admin addresses in the sidecar's
// "sidecar started" log line, or returns "" for both.
func startedAddrs(logs string) (listen, admin string) {
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"sidecar started"`) {
			continue
		}
		var l struct {
			Msg    string   `json:"msg"`
			Listen []string `json:"listen"`
			Admin  string   `json:"admin"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "sidecar started" && len(l.Listen) > 0 {
			return l.Listen[0], "http://" + l.Admin
		}
	}
	return "", ""
}

// connect opens a client connection through the sidecar; the caller
// closes it.
func (p *sidecarProcess) connect(t *testing.T) *pgx.Conn {
	t.Helper()
	host, port, _ := net.SplitHostPort(p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s dbname=brownie_metadata user=brownie-fastapi-server sslmode=disable", host, port))
	if err != nil {
		t.Fatalf("connect through the sidecar: %v", err)
	}
	return conn
}

// kill sends SIGKILL and waits until the process is gone.
func (p *sidecarProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar outlived SIGKILL by 10s")
	}
}

// terminate stops the process with SIGTERM (SIGKILL after 10s) if it still
// runs and returns its exit code (-1 when killed by a signal). Idempotent.
func (p *sidecarProcess) terminate(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("the sidecar did not stop 10s after SIGTERM:\n%s", p.problems())
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	return p.cmd.ProcessState.ExitCode()
}

// recoveries counts the prepared parts the sidecar's recovery finished, by
// action (committed, rolled_back), from its log.
func (p *sidecarProcess) recoveries() map[string]int {
	n := map[string]int{}
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if !strings.Contains(line, "two-phase recovery finished") {
			continue
		}
		var l struct {
			Msg    string `json:"msg"`
			Action string `json:"action"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "two-phase recovery finished a prepared part left behind" {
			n[l.Action]++
		}
	}
	return n
}

// problems returns the sidecar's log lines at level warn and above, and
// any that are not JSON (a panic).
func (p *sidecarProcess) problems() string {
	var out []string
	for _, line := range strings.Split(p.logs.String(), "\n") {
		for _, mark := range []string{`"level":"warn"`, `"level":"error"`, `"level":"dpanic"`, `"level":"panic"`, `"level":"fatal"`} {
			if strings.Contains(line, mark) {
				out = append(out, line)
				break
			}
		}
		if line != "" && !strings.HasPrefix(line, "{") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
