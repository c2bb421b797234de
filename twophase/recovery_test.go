package twophase

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testMapYAML = `
key_type: uuid
shards:
  - {name: shard-0, primary: "127.0.0.1:5001"}
  - {name: shard-1, primary: "127.0.0.1:5011"}
  - {name: shard-2, primary: "127.0.0.1:5021"}
tables:
  incidents: {sharded_by: team_id}
`

// timeout is the tests' TWO_PHASE_TIMEOUT: parts are looked at from 30s,
// anchors rolled back from 60s.
const timeout = time.Minute

// The statements the recovery sends, as Postgres receives them.
const (
	readRowsSQL  = "SELECT gid FROM brownie_sidecar.commit_log ORDER BY committed_at LIMIT 10000"
	scanSQL      = "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'brownie:%'"
	anchorAgeSQL = "SELECT extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts WHERE gid = "
	rowSQL       = "SELECT 1 FROM brownie_sidecar.commit_log WHERE gid = "
	deleteSQL    = "DELETE FROM brownie_sidecar.commit_log WHERE gid IN ("
)

// fakePart is a transaction prepared on a fake shard.
type fakePart struct {
	age      time.Duration // since PREPARE TRANSACTION
	decision bool          // it inserted its write's decision row (an anchor part)
}

// fakeShard is one shard primary as the recovery sees it: its prepared
// transactions and its visible decision rows.
type fakeShard struct {
	prepared map[string]fakePart
	rows     []string // brownie_sidecar.commit_log, oldest first
}

// fakeCluster answers the recovery's statements the way the shards'
// primaries would, and records them. Safe for concurrent use.
type fakeCluster struct {
	t      *testing.T
	mu     sync.Mutex
	shards map[string]*fakeShard
	down   map[string]bool // OnPrimary fails for these shards
	sent   []string        // "shard: statement", in order
	// before, when set, runs (with mu held) before a statement is
	// answered: another actor's work arriving first.
	before func(shard, sql string)
}

func newFakeCluster(t *testing.T) *fakeCluster {
	c := &fakeCluster{t: t, shards: map[string]*fakeShard{}, down: map[string]bool{}}
	for _, n := range []string{"shard-0", "shard-1", "shard-2"} {
		c.shards[n] = &fakeShard{prepared: map[string]fakePart{}}
	}
	return c
}

// prepare leaves a part of gid prepared on shard for age.
func (c *fakeCluster) prepare(shard, gid string, age time.Duration) {
	anchor, _ := Anchor(gid)
	c.shards[shard].prepared[gid] = fakePart{age: age, decision: anchor == shard}
}

// commitRow makes gid's decision row visible on its anchor: the anchor
// committed.
func (c *fakeCluster) commitRow(shard, gid string) {
	c.shards[shard].rows = append(c.shards[shard].rows, gid)
}

// onPrimary is Deps.OnPrimary.
func (c *fakeCluster) onPrimary(ctx context.Context, shard string, fn func(health.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	down, sh := c.down[shard], c.shards[shard]
	c.mu.Unlock()
	if down {
		return errors.New("dial tcp: connection refused")
	}
	if sh == nil {
		return fmt.Errorf("shard %s is not in the shard map", shard)
	}
	return fn(&fakeConn{c: c, shard: shard, sh: sh})
}

// statements returns what was sent, in order, that matches one of the
// prefixes (all of it without prefixes).
func (c *fakeCluster) statements(prefixes ...string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, s := range c.sent {
		_, stmt, _ := strings.Cut(s, ": ")
		if len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(stmt, p) }) {
			out = append(out, s)
		}
	}
	return out
}

// finished returns the statements that finished parts or deleted rows.
func (c *fakeCluster) finished() []string {
	return c.statements("COMMIT PREPARED", "ROLLBACK PREPARED", "DELETE")
}

// fakeConn is a health.Conn to one fake shard.
type fakeConn struct {
	c     *fakeCluster
	shard string
	sh    *fakeShard
}

var _ health.Conn = (*fakeConn)(nil)

func (f *fakeConn) Exec(sql string, onRow func([][]byte)) error {
	c, sh := f.c, f.sh
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.before != nil {
		c.before(f.shard, sql)
	}
	c.sent = append(c.sent, f.shard+": "+sql)
	row := func(vals ...string) {
		if onRow == nil {
			return
		}
		r := make([][]byte, len(vals))
		for i, v := range vals {
			r[i] = []byte(v)
		}
		onRow(r)
	}
	secs := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }
	switch {
	case sql == readRowsSQL:
		for _, gid := range sh.rows {
			row(gid)
		}
	case sql == scanSQL:
		for _, gid := range slices.Sorted(maps.Keys(sh.prepared)) {
			if strings.HasPrefix(gid, "brownie:") {
				row(gid, secs(sh.prepared[gid].age))
			}
		}
	case strings.HasPrefix(sql, anchorAgeSQL):
		if p, ok := sh.prepared[f.unquote(strings.TrimPrefix(sql, anchorAgeSQL))]; ok {
			row(secs(p.age))
		}
	case strings.HasPrefix(sql, rowSQL):
		if slices.Contains(sh.rows, f.unquote(strings.TrimPrefix(sql, rowSQL))) {
			row("1")
		}
	case strings.HasPrefix(sql, "COMMIT PREPARED "), strings.HasPrefix(sql, "ROLLBACK PREPARED "):
		commit := strings.HasPrefix(sql, "COMMIT")
		_, lit, _ := strings.Cut(sql, "PREPARED ")
		gid := f.unquote(lit)
		p, ok := sh.prepared[gid]
		if !ok {
			return pgerr.Errorf(pgerr.UndefinedObject, "prepared transaction with identifier %q does not exist", gid)
		}
		delete(sh.prepared, gid)
		if commit && p.decision {
			sh.rows = append(sh.rows, gid)
		}
	case strings.HasPrefix(sql, deleteSQL) && strings.HasSuffix(sql, ")"):
		for _, lit := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(sql, deleteSQL), ")"), ",") {
			gid := f.unquote(lit)
			sh.rows = slices.DeleteFunc(sh.rows, func(r string) bool { return r == gid })
		}
	default:
		c.t.Errorf("%s: unexpected statement %q", f.shard, sql)
		return pgerr.Errorf(pgerr.Code("42601"), "syntax error")
	}
	return nil
}

// unquote reads a literal quoteLiteral wrote without a backslash.
func (f *fakeConn) unquote(lit string) string {
	if len(lit) < 2 || lit[0] != '\'' || lit[len(lit)-1] != '\'' {
		f.c.t.Errorf("%s: not a plain literal: %q", f.shard, lit)
		return ""
	}
	return strings.ReplaceAll(lit[1:len(lit)-1], "''", "'")
}

func (f *fakeConn) InTransaction() bool         { return false }
func (f *fakeConn) SetDeadline(time.Time) error { return nil }
func (f *fakeConn) Close() error                { return nil }

// newTestRecovery returns a recovery over the three-shard test map and c,
// with its metrics and its log.
func newTestRecovery(t *testing.T, c *fakeCluster, interval time.Duration) (*Recovery, *metrics.Metrics, *observer.ObservedLogs) {
	t.Helper()
	m, err := router.ParseMap([]byte(testMapYAML))
	if err != nil {
		t.Fatalf("ParseMap: %v", err)
	}
	r, err := router.New(m)
	if err != nil {
		t.Fatalf("router.New: %v", err)
	}
	met := metrics.New(prometheus.NewRegistry())
	core, logs := observer.New(zapcore.DebugLevel)
	return New(Config{Timeout: timeout, Interval: interval},
		Deps{Router: r, OnPrimary: c.onPrimary, Metrics: met, Log: zap.New(core)}), met, logs
}

// recovered returns TwoPhaseRecovered's committed and rolled_back counts.
func recovered(m *metrics.Metrics) (committed, rolledBack float64) {
	return testutil.ToFloat64(m.TwoPhaseRecovered.WithLabelValues("committed")),
		testutil.ToFloat64(m.TwoPhaseRecovered.WithLabelValues("rolled_back"))
}

func wantStatements(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot  %q\nwant %q", what, got, want)
	}
}

const gid = "brownie:0123456789abcdef01234567:shard-0" // anchored on shard-0

func TestPartsOfACommittedWriteAreCommittedThenItsDecisionRowDeleted(t *testing.T) {
	c := newFakeCluster(t)
	c.commitRow("shard-0", gid)
	c.prepare("shard-1", gid, 31*time.Second)
	c.prepare("shard-2", gid, 5*time.Second) // the write's oldest part decides when it is looked at
	r, m, logs := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "first round", c.finished(), []string{
		"shard-1: COMMIT PREPARED '" + gid + "'",
		"shard-2: COMMIT PREPARED '" + gid + "'",
	})
	if cm, rb := recovered(m); cm != 2 || rb != 0 {
		t.Errorf("recovered committed=%v rolled_back=%v, want 2 and 0", cm, rb)
	}
	finishedLogs := logs.FilterMessage("two-phase recovery finished a prepared part left behind").All()
	if len(finishedLogs) != 2 || finishedLogs[0].ContextMap()["action"] != "committed" || finishedLogs[0].ContextMap()["shard"] != "shard-1" {
		t.Errorf("finish log lines: %v", finishedLogs)
	}
	if len(c.shards["shard-0"].rows) != 1 {
		t.Errorf("the decision row was deleted while parts were still in the scan")
	}

	// The next round finds no part left: the row goes.
	r.round(context.Background())
	wantStatements(t, "second round", c.finished()[2:], []string{
		"shard-0: DELETE FROM brownie_sidecar.commit_log WHERE gid IN ('" + gid + "')",
	})
	if len(c.shards["shard-0"].rows) != 0 {
		t.Errorf("decision rows left: %q", c.shards["shard-0"].rows)
	}
}

func TestPartsOfARolledBackWriteAreRolledBack(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-1", gid, 40*time.Second) // the anchor is neither prepared nor committed
	r, m, _ := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "asked the anchor", c.statements(anchorAgeSQL, rowSQL), []string{
		"shard-0: " + anchorAgeSQL + "'" + gid + "'",
		"shard-0: " + rowSQL + "'" + gid + "'",
	})
	wantStatements(t, "finished", c.finished(), []string{"shard-1: ROLLBACK PREPARED '" + gid + "'"})
	if cm, rb := recovered(m); cm != 0 || rb != 1 {
		t.Errorf("recovered committed=%v rolled_back=%v, want 0 and 1", cm, rb)
	}
}

func TestAnAnchorPreparedLongerThanTheTimeoutIsRolledBackFirst(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-0", gid, timeout+time.Second)
	c.prepare("shard-1", gid, timeout-time.Second)
	c.prepare("shard-2", gid, timeout-time.Second)
	r, m, _ := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "finished", c.finished(), []string{
		"shard-0: ROLLBACK PREPARED '" + gid + "'",
		"shard-1: ROLLBACK PREPARED '" + gid + "'",
		"shard-2: ROLLBACK PREPARED '" + gid + "'",
	})
	if cm, rb := recovered(m); cm != 0 || rb != 3 {
		t.Errorf("recovered committed=%v rolled_back=%v, want 0 and 3", cm, rb)
	}
	if len(c.statements(rowSQL)) != 0 {
		t.Errorf("a prepared anchor's decision row was looked for: %q", c.statements(rowSQL))
	}
}

func TestALateCommitOfAnAbandonedAnchorWinsOverTheRecovery(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-0", gid, timeout+time.Second)
	c.prepare("shard-1", gid, timeout+time.Second)
	// The write's own sidecar commits the anchor just before the
	// recovery's rollback reaches it: the rollback fails (42704) and the
	// write is committed, so shard-1's part must be committed, not rolled
	// back.
	c.before = func(shard, sql string) {
		if shard == "shard-0" && strings.HasPrefix(sql, "ROLLBACK PREPARED") {
			delete(c.shards["shard-0"].prepared, gid)
			c.shards["shard-0"].rows = append(c.shards["shard-0"].rows, gid)
			c.before = nil
		}
	}
	r, m, _ := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "first round", c.finished(), []string{"shard-0: ROLLBACK PREPARED '" + gid + "'"})
	if _, ok := c.shards["shard-1"].prepared[gid]; !ok {
		t.Fatalf("shard-1's part was finished in the round that lost the race to the commit")
	}
	r.round(context.Background())
	wantStatements(t, "second round", c.finished()[1:], []string{"shard-1: COMMIT PREPARED '" + gid + "'"})
	if cm, rb := recovered(m); cm != 1 || rb != 0 {
		t.Errorf("recovered committed=%v rolled_back=%v, want 1 and 0", cm, rb)
	}
}

func TestAnAnchorStillWithinTheTimeoutLeavesItsWriteUndecided(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-0", gid, timeout-time.Second)
	c.prepare("shard-1", gid, timeout-time.Second)
	r, m, _ := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "asked the anchor", c.statements(anchorAgeSQL), []string{"shard-0: " + anchorAgeSQL + "'" + gid + "'"})
	wantStatements(t, "finished", c.finished(), nil)
	if cm, rb := recovered(m); cm != 0 || rb != 0 {
		t.Errorf("recovered committed=%v rolled_back=%v, want nothing", cm, rb)
	}
}

func TestPartsYoungerThanHalfTheTimeoutAreLeftAlone(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-1", gid, timeout/2-time.Second) // anchor gone, no row: a rollback once old enough
	c.prepare("shard-2", gid, time.Second)
	r, _, _ := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	if asked := c.statements(anchorAgeSQL, rowSQL); len(asked) != 0 {
		t.Errorf("the anchor of a young write was asked: %q", asked)
	}
	wantStatements(t, "finished", c.finished(), nil)
	if len(c.shards["shard-1"].prepared) != 1 || len(c.shards["shard-2"].prepared) != 1 {
		t.Errorf("young parts were finished")
	}
}

func TestAPartAlreadyFinishedElsewhereIsNotCounted(t *testing.T) {
	c := newFakeCluster(t)
	c.commitRow("shard-0", gid)
	c.prepare("shard-1", gid, 40*time.Second)
	// Another sidecar's recovery commits the part between the scan and
	// this one's COMMIT PREPARED, which then fails with 42704.
	c.before = func(shard, sql string) {
		if shard == "shard-1" && strings.HasPrefix(sql, "COMMIT PREPARED") {
			delete(c.shards["shard-1"].prepared, gid)
		}
	}
	r, m, logs := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "finished", c.finished(), []string{"shard-1: COMMIT PREPARED '" + gid + "'"})
	if cm, rb := recovered(m); cm != 0 || rb != 0 {
		t.Errorf("recovered committed=%v rolled_back=%v, want nothing", cm, rb)
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 0 {
		t.Errorf("%d warnings for a part already finished: %v", n, logs.All())
	}
}

func TestAMalformedIdentifierIsLeftAloneAndTheRoundGoesOn(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-1", "brownie:nocolon", time.Hour)
	c.prepare("shard-1", gid, 40*time.Second)
	r, _, logs := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "finished", c.finished(), []string{"shard-1: ROLLBACK PREPARED '" + gid + "'"})
	if logs.FilterMessage("two-phase recovery: cannot resolve transaction yet").FilterField(zap.String("gid", "brownie:nocolon")).Len() != 1 {
		t.Errorf("the malformed identifier was not reported: %v", logs.All())
	}
}

func TestDecisionRowsAreDeletedOnlyAfterACompleteScan(t *testing.T) {
	const (
		done    = "brownie:aa:shard-0" // committed everywhere
		pending = "brownie:bb:shard-1" // committed on its anchor, a part still prepared
	)
	c := newFakeCluster(t)
	c.commitRow("shard-0", done)
	c.commitRow("shard-1", pending)
	c.prepare("shard-2", pending, time.Second)
	c.down["shard-2"] = true
	r, _, _ := newTestRecovery(t, c, time.Hour)

	r.round(context.Background())
	wantStatements(t, "with shard-2 unreachable", c.finished(), nil)

	c.mu.Lock()
	c.down["shard-2"] = false
	c.mu.Unlock()
	r.round(context.Background())
	wantStatements(t, "with every shard scanned", c.finished(), []string{
		"shard-0: DELETE FROM brownie_sidecar.commit_log WHERE gid IN ('" + done + "')",
	})
	if got := c.shards["shard-1"].rows; !slices.Equal(got, []string{pending}) {
		t.Errorf("shard-1 decision rows = %q, want the pending write's kept", got)
	}
}

func TestFewerThanTwoShardsNeedNoRecovery(t *testing.T) {
	m, err := router.ParseMap([]byte(`
key_type: uuid
shards:
  - {name: shard-0, primary: "127.0.0.1:5001"}
tables:
  incidents: {sharded_by: team_id}
`))
	if err != nil {
		t.Fatalf("ParseMap: %v", err)
	}
	rt, err := router.New(m)
	if err != nil {
		t.Fatalf("router.New: %v", err)
	}
	c := newFakeCluster(t)
	r := New(Config{Timeout: timeout, Interval: time.Hour},
		Deps{Router: rt, OnPrimary: c.onPrimary, Metrics: metrics.New(prometheus.NewRegistry()), Log: zap.NewNop()})
	r.round(context.Background())
	if got := c.statements(); len(got) != 0 {
		t.Errorf("statements sent with one shard: %q", got)
	}
}

func TestRunRecoversEachIntervalUntilItsContextEnds(t *testing.T) {
	c := newFakeCluster(t)
	c.prepare("shard-1", gid, 40*time.Second)
	r, _, _ := newTestRecovery(t, c, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(c.statements(readRowsSQL)) < 2*3 { // two rounds over three shards
		if time.Now().After(deadline) {
			t.Fatal("no recovery rounds within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	wantStatements(t, "finished", c.finished(), []string{"shard-1: ROLLBACK PREPARED '" + gid + "'"})
}
