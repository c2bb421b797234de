package app

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// queryInts runs sql through conn and returns the first column of every
// row.
func queryInts(t *testing.T, conn *pgx.Conn, sql string, args ...any) ([]int, error) {
	t.Helper()
	rows, err := conn.Query(ctx10(t), sql, args...)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	slices.Sort(ids)
	return ids, err
}

// testFanOut checks keyless statements on a table whose keyless policy is
// all: they run on every shard, rows come from both, command tags count
// every shard's rows, writes outside a transaction are all-or-nothing
// before commit, and inside a transaction only reads span shards. a is a
// team on shard-0, b one on shard-1.
func testFanOut(t *testing.T, e *routingEnv, a, b pgtype.UUID) {
	ctx := context.Background()
	conn := e.sc.connect(t, "")
	for i, team := range []pgtype.UUID{a, a, a, b, b} {
		if _, err := conn.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, $2)", team, 101+i); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.direct(t, "shard-0", "SELECT string_agg(id::text, ',' ORDER BY id) FROM events"); got != "101,102,103" {
		t.Fatalf("shard-0 events: %s", got)
	}
	e.replayed(t)
	all := []int{101, 102, 103, 104, 105}

	// Keys on two shards: the statement runs on both, even on a table
	// whose keyless policy is reject.
	_, err := conn.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 9001), ($2, 9002)", a, b)
	if code := pgErrCode(err); code != "0A000" {
		t.Errorf("one INSERT of rows for two shards: %v, want 0A000 (fanned out, every row would land on both)", err)
	}
	for _, team := range []pgtype.UUID{a, b} {
		if _, err := conn.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 9001)", team); err != nil {
			t.Fatal(err)
		}
	}
	if ids, err := queryInts(t, conn, "SELECT id FROM items WHERE id = 9001 AND team_id = ANY($1)", []pgtype.UUID{a, b}); err != nil || !slices.Equal(ids, []int{9001, 9001}) {
		t.Errorf("keys on two shards: %v, %v; want a row from each", ids, err)
	}
	if tag, err := conn.Exec(ctx, "DELETE FROM items WHERE id = 9001 AND team_id IN ($1, $2)", a, b); err != nil || tag.String() != "DELETE 2" {
		t.Errorf("delete with keys on two shards: %q, %v; want DELETE 2", tag, err)
	}

	// Rows from every shard, in each protocol: pgx's cached named
	// statements (extended, binary), the simple protocol, and text-format
	// parameters as psycopg 3 sends them.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		ids, err := queryInts(t, conn, "SELECT id FROM events WHERE id > $1", mode, 100)
		if err != nil || !slices.Equal(ids, all) {
			t.Errorf("fan-out read (%v): %v, %v; want %v", mode, ids, err, all)
		}
	}
	res := conn.PgConn().ExecParams(ctx10(t), "SELECT id FROM events WHERE id > $1::bigint", [][]byte{[]byte("100")}, nil, []int16{0}, nil).Read()
	if res.Err != nil || len(res.Rows) != 5 || res.CommandTag.String() != "SELECT 5" {
		t.Errorf("text parameters: %d rows, tag %q, %v; want 5 rows, SELECT 5", len(res.Rows), res.CommandTag, res.Err)
	}
	// Aggregates are merged: one count, as one database holding every
	// row answers; an aggregate inside an expression is refused, not
	// answered per shard.
	var counts []int
	counts, err = queryInts(t, conn, "SELECT count(*) FROM events")
	if err != nil || !slices.Equal(counts, []int{5}) {
		t.Errorf("count(*) spanning shards: %v, %v; want [5]", counts, err)
	}
	if _, err := queryInts(t, conn, "SELECT count(*)::int FROM events"); pgErrCode(err) != "0A000" || !strings.Contains(err.Error(), "count") {
		t.Errorf("count(*)::int spanning shards: %v, want 0A000 naming the aggregate", err)
	}
	// Outside transactions the reads go to the replicas of both shards
	// (once they have replayed the client's own writes: read-your-writes).
	waitFor(t, 10*time.Second, "a fan-out read served by both replicas", func() bool {
		rows, err := conn.Query(ctx10(t), "SELECT DISTINCT inet_server_port(), pg_is_in_recovery() FROM events")
		if err != nil {
			t.Fatal(err)
		}
		var servers []string
		for rows.Next() {
			var port int
			var rec bool
			if err := rows.Scan(&port, &rec); err != nil {
				t.Fatal(err)
			}
			servers = append(servers, e.ports[port])
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		slices.Sort(servers)
		return slices.Equal(servers, []string{"shard-0/replica", "shard-1/replica"})
	})

	// A pipeline of two fan-outs (one Sync) works; one mixing a keyed
	// statement and a fan-out is refused, not run on the wrong shards.
	br := conn.SendBatch(ctx, &pgx.Batch{QueuedQueries: []*pgx.QueuedQuery{
		{SQL: "SELECT count(*) FROM events WHERE id >= $1", Arguments: []any{101}},
		{SQL: "SELECT count(*) FROM events WHERE id >= $1", Arguments: []any{104}},
	}})
	for i, want := range []int64{5, 2} {
		rows, err := br.Query()
		var got []int64
		if err == nil {
			got, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		}
		if err != nil || !slices.Equal(got, []int64{want}) {
			t.Errorf("pipelined fan-out %d: %v, %v; want [%d]", i, got, err, want)
		}
	}
	if err := br.Close(); err != nil {
		t.Errorf("pipelined fan-outs: %v", err)
	}
	br = conn.SendBatch(ctx, &pgx.Batch{QueuedQueries: []*pgx.QueuedQuery{
		{SQL: "SELECT count(*) FROM events WHERE team_id = $1", Arguments: []any{a}},
		{SQL: "SELECT count(*) FROM events WHERE id >= $1", Arguments: []any{101}},
	}})
	_, err = br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	if code := pgErrCode(err); code != "0A000" {
		t.Errorf("pipeline mixing a keyed statement and a fan-out: %v, want 0A000", err)
	}
	_ = br.Close()

	// Writes outside a transaction: the tag counts every shard's rows, and a
	// failure on one shard leaves every shard unchanged.
	tag, err := conn.Exec(ctx, "UPDATE events SET id = id + 100")
	if err != nil || tag.String() != "UPDATE 5" {
		t.Errorf("fan-out update: %q, %v; want UPDATE 5", tag, err)
	}
	tag, err = conn.Exec(ctx, "UPDATE events SET id = id - 100 + 0 / (id - 205)") // 205 is on shard-1 only
	if code := pgErrCode(err); code != "22012" {
		t.Errorf("fan-out update failing on shard-1: %q, %v; want 22012", tag, err)
	}
	for shard, want := range map[string]string{"shard-0": "201,202,203", "shard-1": "204,205"} {
		if got := e.direct(t, shard, "SELECT string_agg(id::text, ',' ORDER BY id) FROM events"); got != want {
			t.Errorf("%s after a failed write spanning shards: %s, want %s (rolled back)", shard, got, want)
		}
	}
	if tag, err = conn.Exec(ctx, "DELETE FROM events WHERE id > 203", pgx.QueryExecModeSimpleProtocol); err != nil || tag.String() != "DELETE 2" {
		t.Errorf("fan-out delete: %q, %v; want DELETE 2", tag, err)
	}
	if tag, err = conn.Exec(ctx, "UPDATE events SET id = id - 100"); err != nil || tag.String() != "UPDATE 3" {
		t.Errorf("fan-out update: %q, %v; want UPDATE 3", tag, err)
	}
	for _, id := range []int{104, 105} {
		if _, err := conn.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, $2)", b, id); err != nil {
			t.Fatal(err)
		}
	}
	// Read-your-writes holds for writes spanning shards too.
	if ids, err := queryInts(t, conn, "SELECT id FROM events"); err != nil || !slices.Equal(ids, all) {
		t.Errorf("read after the fan-out writes: %v, %v; want %v", ids, err, all)
	}

	// In a transaction: every shard answers inside the transaction (the
	// shard holding its uncommitted row sees it); a write spanning shards
	// joins the transaction and goes away with its rollback.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, 106)", a); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx10(t), "SELECT id FROM events")
	ids, err2 := pgx.CollectRows(rows, pgx.RowTo[int])
	slices.Sort(ids)
	if err != nil || err2 != nil || !slices.Equal(ids, append(slices.Clone(all), 106)) {
		t.Errorf("fan-out read in a transaction: %v, %v, %v", ids, err, err2)
	}
	if tag, err := tx.Exec(ctx, "UPDATE events SET id = id + 1000"); err != nil || tag.String() != "UPDATE 6" {
		t.Errorf("write spanning shards in a transaction: %q, %v; want UPDATE 6", tag, err)
	}
	if ids, err := queryInts(t, conn, "SELECT id FROM events WHERE id > 1000"); err != nil || len(ids) != 6 {
		t.Errorf("the transaction's own write, read back: %v, %v", ids, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, err := queryInts(t, conn, "SELECT id FROM events"); err != nil || !slices.Equal(ids, all) {
		t.Errorf("after the rollback: %v, %v; want %v", ids, err, all)
	}
	// A transaction whose first statement fans out (its BEGIN is deferred)
	// still chooses its shard with its next statement, and commits.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err := queryInts(t, conn, "SELECT id FROM events"); err != nil || !slices.Equal(ids, all) {
		t.Errorf("fan-out read opening a transaction: %v, %v", ids, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, 106)", b); err != nil {
		t.Errorf("keyed insert after the fan-out: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.direct(t, "shard-1", "SELECT count(*) FROM events WHERE id = 106"); got != "1" {
		t.Errorf("row committed after a fan-out read: %s on shard-1, want 1", got)
	}
	// A failed fan-out read fails the transaction it opened.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "SELECT 1 / (id - 106) FROM events")
	if code := pgErrCode(err); code != "22012" {
		t.Errorf("failing fan-out read: %v, want 22012", err)
	}
	_, err = tx.Exec(ctx, "SELECT 1")
	if code := pgErrCode(err); code != "25P02" {
		t.Errorf("after a failed fan-out read: %v, want 25P02", err)
	}
	_ = tx.Rollback(ctx)

	// Cancel reaches every shard of a fan-out.
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "/* brownie:role=primary */ SELECT pg_sleep(30) FROM events WHERE id = 101 OR id = 104")
		done <- err
	}()
	for _, shard := range []string{"shard-0", "shard-1"} {
		waitFor(t, 10*time.Second, "the sleep running on "+shard, func() bool {
			return e.direct(t, shard, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()") == "1"
		})
	}
	if err := conn.PgConn().CancelRequest(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if code := pgErrCode(err); code != "57014" {
			t.Errorf("cancelled fan-out: %v, want 57014", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the cancelled fan-out did not end")
	}
	if ids, err := queryInts(t, conn, "SELECT id FROM events WHERE id < $1", 106); err != nil || !slices.Equal(ids, all) {
		t.Errorf("session after the cancel: %v, %v", ids, err)
	}

	// psycopg 3 as SQLAlchemy drives it: an implicit transaction opened by
	// a keyless read (text parameters), then a keyed write, then commit.
	script := `
import sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    ids = sorted(r[0] for r in c.execute("SELECT id FROM events WHERE id > %s", (100,)))
    c.execute("INSERT INTO events (team_id, id) VALUES (%s, %s)", (sys.argv[2], 107))
    c.commit()
    print(",".join(map(str, ids)))
`
	out, err := exec.CommandContext(ctx10(t), "/usr/bin/python3", "-c", script, e.sc.dsn(""), uuidText(a)).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "101,102,103,104,105,106" {
		t.Errorf("psycopg: %s, %v", out, err)
	}
	if got := e.direct(t, "shard-0", "SELECT count(*) FROM events WHERE id = 107"); got != "1" {
		t.Errorf("psycopg's keyed insert after a fan-out: %s rows on shard-0, want 1", got)
	}

	// Many clients mixing fan-out reads and keyed writes on a pool of 8
	// per host: every result right, no error, no deadlock.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := pgx.Connect(ctx, e.sc.dsn(""))
			if err != nil {
				errs <- err
				return
			}
			defer cc.Close(ctx)
			team := []pgtype.UUID{a, b}[c%2]
			for i := range 30 {
				id := 10000 + c*100 + i
				if _, err := cc.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, $2)", team, id); err != nil {
					errs <- err
					return
				}
				// Merged: 1 on the team's shard plus 0 elsewhere.
				rows, _ := cc.Query(ctx, "/* brownie:role=primary */ SELECT count(*) FROM events WHERE id = $1", id)
				counts, err := pgx.CollectRows(rows, pgx.RowTo[int])
				if err != nil || !slices.Equal(counts, []int{1}) {
					errs <- fmt.Errorf("client %d: counts for %d: %v, %v", c, id, counts, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	_, body := e.sc.get(t, "/metrics")
	for _, m := range []string{`brownie_sidecar_fanouts_total{kind="read",outcome="ok"}`, `brownie_sidecar_fanouts_total{kind="write",outcome="error"}`,
		`brownie_sidecar_two_phase_commits_total{outcome="committed"}`} {
		if v, ok := metricValue(body, m); !ok || v == 0 {
			t.Errorf("metric %s = %v (present %v), want > 0", m, v, ok)
		}
	}
	if _, err := conn.Exec(ctx, "DELETE FROM events"); err != nil {
		t.Error(err)
	}
}

// metricValue returns the value of the sample named exactly series (name
// and labels) in a Prometheus text exposition.
func metricValue(body, series string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}
