package app

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// TestTransactionsSpanningShards runs client transactions that need both
// shards: writes on two shards and to replicated tables commit together
// (two-phase) or not at all, savepoints apply to every shard (also to one
// joining after the savepoint), a failed statement fails the whole
// transaction, a departing client leaves nothing behind, and DDL runs on
// every shard atomically.
func TestTransactionsSpanningShards(t *testing.T) {
	e := startRouting(t)
	ctx := context.Background()
	a, b := e.teamOn(t, "shard-0"), e.teamOn(t, "shard-1")
	items := func(shard string) string {
		return e.direct(t, shard, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM items WHERE id >= 5000")
	}
	dir := func(shard string) string {
		return e.direct(t, shard, "SELECT coalesce(string_agg(id || '=' || name, ',' ORDER BY id), '') FROM dir")
	}
	expect := func(t *testing.T, what, want0, want1 string) {
		t.Helper()
		if got0, got1 := items("shard-0"), items("shard-1"); got0 != want0 || got1 != want1 {
			t.Errorf("%s: items %q on shard-0 and %q on shard-1, want %q and %q", what, got0, got1, want0, want1)
		}
	}
	sameDir := func(t *testing.T, want string) {
		t.Helper()
		if d0, d1 := dir("shard-0"), dir("shard-1"); d0 != want || d1 != want {
			t.Errorf("replicated table dir: %q on shard-0, %q on shard-1, want %q on both", d0, d1, want)
		}
	}
	nonePrepared := func(t *testing.T) {
		t.Helper()
		for _, shard := range []string{"shard-0", "shard-1"} {
			if n := e.direct(t, shard, "SELECT count(*) FROM pg_prepared_xacts"); n != "0" {
				t.Errorf("%s holds %s prepared transactions, want 0", shard, n)
			}
		}
	}
	exec := func(t *testing.T, q pgx.Tx, sql string, args ...any) {
		t.Helper()
		if _, err := q.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	conn := e.sc.connect(t, "")

	t.Run("WritesOnTwoShardsAndReplicatedTablesCommitTogether", func(t *testing.T) {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			id := 5000
			if mode == pgx.QueryExecModeSimpleProtocol {
				id = 5010
			}
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			exec(t, tx, "INSERT INTO dir (id, name) VALUES ($1, 'signup')", mode, id)
			exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, $2)", mode, a, id)
			exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, $2)", mode, b, id+1)
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM dir WHERE id = $1", mode, id).Scan(&n); err != nil || n != 1 {
				t.Errorf("the transaction reads its own replicated write: %d, %v", n, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatalf("commit (%v): %v", mode, err)
			}
		}
		expect(t, "after two commits", "5000,5010", "5001,5011")
		sameDir(t, "1=one,2=two,5000=signup,5010=signup")
		nonePrepared(t)
		_, body := e.sc.get(t, "/metrics")
		if !strings.Contains(body, `brownie_sidecar_cross_shard_transactions_total{outcome="committed",shards="2"} 2`) {
			t.Errorf("metrics lack two committed cross-shard transactions:\n%s", grepLines(body, "cross_shard"))
		}
	})

	t.Run("RollbackAndFailuresLeaveNoShardChanged", func(t *testing.T) {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5100)", a)
		exec(t, tx, "UPDATE dir SET name = 'gone' WHERE id = 1")
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5101)", b)
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// A failed statement fails the transaction; COMMIT rolls it back.
		tx, err = conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5102)", a)
		exec(t, tx, "INSERT INTO dir (id, name) VALUES (5102, 'x')")
		if _, err := tx.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 1/0)", b); pgErrCode(err) != "22012" {
			t.Errorf("division by zero on shard-1: %v, want 22012", err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); pgErrCode(err) != "25P02" {
			t.Errorf("a statement after the failure: %v, want 25P02", err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 5103)", a); pgErrCode(err) != "25P02" {
			t.Errorf("a keyed statement after the failure: %v, want 25P02", err)
		}
		if err := tx.Commit(ctx); err == nil || !strings.Contains(err.Error(), "rollback") {
			t.Errorf("commit of a failed transaction: %v, want pgx's rollback error", err)
		}
		expect(t, "after a rollback and a failed transaction", "5000,5010", "5001,5011")
		sameDir(t, "1=one,2=two,5000=signup,5010=signup")
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Errorf("the session after the failed transaction: %v", err)
		}
	})

	t.Run("SavepointsApplyToEveryShard", func(t *testing.T) {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5200)", a)
		// shard-1 joins after the savepoint: rolling back to it undoes its
		// work too.
		exec(t, tx, "SAVEPOINT s1")
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5201)", b)
		exec(t, tx, "ROLLBACK TO SAVEPOINT s1")
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5203)", b)
		exec(t, tx, "SAVEPOINT s2")
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5204)", a)
		// A failure inside a savepoint is undone by rolling back to it.
		if _, err := tx.Exec(ctx, "INSERT INTO dir (id, name) VALUES (1, 'dup')"); pgErrCode(err) != "23505" {
			t.Errorf("duplicate key: %v, want 23505", err)
		}
		exec(t, tx, "ROLLBACK TO SAVEPOINT s2")
		exec(t, tx, "RELEASE SAVEPOINT s1")
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		expect(t, "after savepoints", "5000,5010,5200", "5001,5011,5203")
		nonePrepared(t)
	})

	counter := func(t *testing.T, name string) float64 {
		_, body := e.sc.get(t, "/metrics")
		v, _ := metricValue(body, name)
		return v
	}
	const moved, ahead = `brownie_sidecar_cross_shard_transactions_total{outcome="moved",shards="1"}`, "brownie_sidecar_reads_ahead_of_begin_total"

	t.Run("ReadsOfReplicatedTablesRunAheadOfTheBeginWhichGoesToTheTeamsShard", func(t *testing.T) {
		m0, a0 := counter(t, moved), counter(t, ahead)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var name string
		if err := tx.QueryRow(ctx, "SELECT name FROM dir WHERE id = $1", 1).Scan(&name); err != nil || name != "one" {
			t.Fatalf("the lookup: %q, %v", name, err)
		}
		if s := conn.PgConn().TxStatus(); s != 'T' {
			t.Errorf("transaction status after a read run ahead of the BEGIN: %c, want T", s)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5300)", b)
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5301)", b)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if m, n := counter(t, moved), counter(t, ahead); m != m0 || n != a0+1 {
			t.Errorf("moved transactions %v → %v, reads ahead %v → %v; want the same and one more", m0, m, a0, n)
		}
		expect(t, "after a transaction whose lookup ran ahead", "5000,5010,5200", "5001,5011,5203,5300,5301")
	})

	t.Run("ATransactionThatOnlyReadReplicatedTablesMovesToItsShard", func(t *testing.T) {
		// A routing hint set first keeps the lookup in the transaction
		// (only a lone BEGIN lets a read run ahead): it runs on shard-0,
		// the first healthy shard, and the transaction moves to shard-1
		// for the team's statements.
		m0 := counter(t, moved)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "SET LOCAL brownie.role = 'primary'")
		var name string
		if err := tx.QueryRow(ctx, "SELECT name FROM dir WHERE id = $1", 1).Scan(&name); err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5302)", b)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if m := counter(t, moved); m != m0+1 {
			t.Errorf("moved transactions went from %v to %v, want one more", m0, m)
		}
		expect(t, "after a moved transaction", "5000,5010,5200", "5001,5011,5203,5300,5301,5302")
	})

	t.Run("AFailedReadRunAheadFailsTheTransactionAsPostgresWould", func(t *testing.T) {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			fail := func(sql, code string) {
				t.Helper()
				if _, err := conn.Exec(ctx, sql, mode); pgErrCode(err) != code {
					t.Errorf("%v: %s: %v, want %s", mode, sql, err, code)
				}
				if s := conn.PgConn().TxStatus(); s != 'E' {
					t.Errorf("%v: transaction status after %s: %c, want E", mode, sql, s)
				}
			}
			if _, err := conn.Exec(ctx, "BEGIN", mode); err != nil {
				t.Fatal(err)
			}
			fail("SELECT 1/0", "22012")
			fail("SELECT 1", "25P02")
			fail("SELECT name FROM dir WHERE id = 1", "25P02")
			fail("SELECT count(*) FROM items", "25P02") // every shard
			fail("INSERT INTO items (team_id, id) VALUES ('"+b.String()+"', 5399)", "25P02")
			fail("SET LOCAL brownie.role = 'primary'", "25P02")
			fail("ROLLBACK TO SAVEPOINT nowhere", "3B001")
			tag, err := conn.Exec(ctx, "COMMIT", mode)
			if err != nil || tag.String() != "ROLLBACK" {
				t.Errorf("%v: COMMIT of the failed transaction: %q, %v; want ROLLBACK", mode, tag, err)
			}
			if s := conn.PgConn().TxStatus(); s != 'I' {
				t.Errorf("%v: transaction status after COMMIT: %c, want I", mode, s)
			}
			// Failed before any statement reached a shard, ended by ROLLBACK.
			if _, err := conn.Exec(ctx, "BEGIN", mode); err != nil {
				t.Fatal(err)
			}
			fail("SELECT 1/0", "22012")
			if tag, err := conn.Exec(ctx, "ROLLBACK", mode); err != nil || tag.String() != "ROLLBACK" {
				t.Errorf("%v: ROLLBACK: %q, %v", mode, tag, err)
			}
			var n int
			if err := conn.QueryRow(ctx, "SELECT 1", mode).Scan(&n); err != nil || n != 1 {
				t.Errorf("%v: the session after the failed transaction: %d, %v", mode, n, err)
			}
		}
		expect(t, "after failed transactions", "5000,5010,5200", "5001,5011,5203,5300,5301,5302")
	})

	t.Run("ADepartingClientLeavesNothing", func(t *testing.T) {
		c := e.sc.connect(t, "")
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5400)", a)
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5401)", b)
		exec(t, tx, "INSERT INTO dir (id, name) VALUES (5400, 'left')")
		c.Close(ctx)
		waitFor(t, 10*time.Second, "the departed client's rows to stay away and its locks to go", func() bool {
			var n int
			err := conn.QueryRow(ctx, "SELECT count(*) FROM items WHERE id = 5400 AND team_id = $1", a).Scan(&n)
			return err == nil && n == 0 && e.direct(t, "shard-0", "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted AND pid <> pg_backend_pid() AND pid IN (SELECT pid FROM pg_stat_activity WHERE state LIKE 'idle in transaction%')") == "0"
		})
		expect(t, "after a client left mid-transaction", "5000,5010,5200", "5001,5011,5203,5300,5301,5302")
		sameDir(t, "1=one,2=two,5000=signup,5010=signup")
		// The same key again: no lock is left held.
		tx, err = conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO dir (id, name) VALUES (5400, 'again')")
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SchemaChangesRunOnEveryShardAtomically", func(t *testing.T) {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "CREATE TABLE ddl_one (id int PRIMARY KEY)")
		exec(t, tx, "ALTER TABLE ddl_one ADD COLUMN note text")
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5500)", b)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, shard := range []string{"shard-0", "shard-1"} {
			if got := e.direct(t, shard, "SELECT count(*) FROM information_schema.columns WHERE (table_name = 'ddl_one' AND column_name = 'id') OR (table_name = 'ddl_one' AND column_name = 'note')"); got != "2" {
				t.Errorf("%s: %s of the 2 new columns, want 2", shard, got)
			}
		}
		// A statement failing on one shard leaves no shard changed.
		if _, err := e.primary("shard-1").Primary.Exec(ctx, "brownie_metadata", `CREATE TABLE ddl_clash (id int); GRANT ALL ON ddl_clash TO "brownie-fastapi-server"`); err != nil {
			t.Fatal(err)
		}
		tx, err = conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "CREATE TABLE ddl_two (id int)")
		if _, err := tx.Exec(ctx, "CREATE TABLE ddl_clash (id int)"); pgErrCode(err) != "42P07" {
			t.Errorf("a table that exists on shard-1: %v, want 42P07", err)
		}
		_ = tx.Rollback(ctx)
		for _, shard := range []string{"shard-0", "shard-1"} {
			if got := e.direct(t, shard, "SELECT count(*) FROM pg_tables WHERE tablename = 'ddl_two' OR (tablename = 'ddl_clash' AND '"+shard+"' = 'shard-0')"); got != "0" {
				t.Errorf("%s: the failed migration left %s tables, want 0", shard, got)
			}
		}
		// Outside a transaction: all-or-nothing too (two-phase), and
		// statements that cannot run in a transaction run shard by shard.
		if _, err := conn.Exec(ctx, "CREATE TABLE ddl_clash (id int)"); pgErrCode(err) != "42P07" {
			t.Errorf("autocommit DDL failing on shard-1: %v, want 42P07", err)
		}
		if got := e.direct(t, "shard-0", "SELECT count(*) FROM pg_tables WHERE tablename = 'ddl_clash'"); got != "0" {
			t.Errorf("autocommit DDL that failed on shard-1 created the table on shard-0")
		}
		if _, err := conn.Exec(ctx, "CREATE INDEX CONCURRENTLY ddl_one_note ON ddl_one (note)"); err != nil {
			t.Errorf("CREATE INDEX CONCURRENTLY on every shard: %v", err)
		}
		for _, shard := range []string{"shard-0", "shard-1"} {
			if got := e.direct(t, shard, "SELECT count(*) FROM pg_indexes WHERE indexname = 'ddl_one_note'"); got != "1" {
				t.Errorf("%s has %s index ddl_one_note, want 1", shard, got)
			}
		}
		_, err = conn.Exec(ctx, "CREATE INDEX CONCURRENTLY ddl_one_note ON ddl_one (note)")
		if pgErrCode(err) != "42P07" || !strings.Contains(err.Error(), "shard-0") {
			t.Errorf("CREATE INDEX CONCURRENTLY that fails: %v, want 42P07 naming the shards", err)
		}
		nonePrepared(t)
	})

	t.Run("ReplicatedRowsGetTheSameTimeOnEveryShard", func(t *testing.T) {
		stamps := func(shard string) string {
			return e.direct(t, shard, "SELECT string_agg(id || ':' || coalesce(note, '') || ':' || created_at || ':' || updated_at || ':' || day, ',' ORDER BY id) FROM stamps")
		}
		// In a transaction spanning shards, with the extended protocol (a
		// prepared statement) and the simple one; a savepoint rolled back
		// past the first write; then outside any transaction.
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5600)", b)
		exec(t, tx, "SAVEPOINT before_stamps")
		exec(t, tx, "INSERT INTO stamps (id) VALUES ($1)", 1)
		exec(t, tx, "ROLLBACK TO SAVEPOINT before_stamps")
		exec(t, tx, "INSERT INTO stamps (id, note) VALUES ($1, $2)", 1, "ext")
		exec(t, tx, "INSERT INTO stamps (id, note) VALUES (2, 'simple')")
		exec(t, tx, "INSERT INTO items (team_id, id) VALUES ($1, 5601)", a)
		var first, second time.Time
		if err := tx.QueryRow(ctx, "SELECT created_at FROM stamps WHERE id = 1").Scan(&first); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO stamps (id, note) VALUES ($1, 'autocommit')", 3); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "UPDATE stamps SET updated_at = now(), note = note || '!' WHERE id = $1", 1); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT created_at FROM stamps WHERE id = 2").Scan(&second); err != nil {
			t.Fatal(err)
		}
		if !first.Equal(second) {
			t.Errorf("two rows of one transaction got created_at %v and %v, want one time (now() is the transaction's)", first, second)
		}
		s0, s1 := stamps("shard-0"), stamps("shard-1")
		if s0 != s1 || strings.Count(s0, ",") != 2 {
			t.Errorf("replicated rows differ between shards or are missing:\nshard-0 %s\nshard-1 %s", s0, s1)
		}
		// A default each shard would evaluate on its own is refused.
		if _, err := e.primary("shard-0").Primary.Exec(ctx, "brownie_metadata", "ALTER TABLE stamps ALTER COLUMN note SET DEFAULT md5(random()::text)"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.primary("shard-1").Primary.Exec(ctx, "brownie_metadata", "ALTER TABLE stamps ALTER COLUMN note SET DEFAULT md5(random()::text)"); err != nil {
			t.Fatal(err)
		}
		// A schema change through the sidecar clears its column cache.
		if _, err := conn.Exec(ctx, "ALTER TABLE stamps ALTER COLUMN day SET DEFAULT '2020-01-01'"); err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "INSERT INTO stamps (id) VALUES (4)")
		if pgErrCode(err) != "0A000" || !strings.Contains(err.Error(), "note") {
			t.Errorf("an INSERT leaving a random default to each shard: %v, want 0A000 naming the column", err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO stamps (id, note) VALUES (4, 'given')"); err != nil {
			t.Errorf("the same INSERT with the value given: %v", err)
		}
	})

	t.Run("ReplicatedRowsThatDifferAreNotWrittenOver", func(t *testing.T) {
		if _, err := e.primary("shard-1").Primary.Exec(ctx, "brownie_metadata", "DELETE FROM dir WHERE id = 5010"); err != nil {
			t.Fatal(err)
		}
		_, err := conn.Exec(ctx, "UPDATE dir SET name = 'renamed' WHERE id = 5010")
		if pgErrCode(err) != "XX001" {
			t.Errorf("update of a replicated row missing on shard-1: %v, want XX001", err)
		}
		if got := dir("shard-0"); !strings.Contains(got, "5010=signup") {
			t.Errorf("shard-0's copy was changed: %s", got)
		}
	})

	t.Run("SessionMode", func(t *testing.T) {
		// In session mode the client keeps a connection of its own while
		// its BEGIN is deferred: that connection is not in the transaction
		// and must not be taken for a leg of it.
		sc := startSidecar(t, e.srv, map[string]string{
			"SHARD_MAP_FILE": e.mapFile, "POOL_MODE": "session", "HEALTH_CHECK_INTERVAL": "100ms",
		})
		waitFor(t, 15*time.Second, "session-mode sidecar ready", func() bool {
			code, _ := sc.get(t, "/ready")
			return code == 200
		})
		sconn := sc.connect(t, "")
		run := func(t *testing.T, mode pgx.QueryExecMode, sql string, args ...any) {
			t.Helper()
			if _, err := sconn.Exec(ctx, sql, append([]any{mode}, args...)...); err != nil {
				t.Fatalf("%s (%v): %v", sql, mode, err)
			}
		}
		// BEGIN and COMMIT as pgx's Exec sends them: prepared in the
		// statement-cache mode (the BEGIN's Parse takes the session's
		// connection), simple queries in the simple mode.
		for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			id := 7100 + 10*i
			// A write first, so the session's connection is a primary's.
			run(t, mode, "UPDATE items SET id = id WHERE team_id = $1 AND id = -1", a)
			run(t, mode, "BEGIN")
			run(t, mode, "INSERT INTO dir (id, name) VALUES ($1, 'session')", id)
			run(t, mode, "INSERT INTO stamps (id, note) VALUES ($1, 'session')", id)
			run(t, mode, "INSERT INTO items (team_id, id) VALUES ($1, $2)", a, id)
			run(t, mode, "INSERT INTO items (team_id, id) VALUES ($1, $2)", b, id+1)
			run(t, mode, "COMMIT")
		}
		run(t, pgx.QueryExecModeCacheStatement, "BEGIN")
		run(t, pgx.QueryExecModeCacheStatement, "INSERT INTO dir (id, name) VALUES (7199, 'rolled back')")
		run(t, pgx.QueryExecModeCacheStatement, "INSERT INTO items (team_id, id) VALUES ($1, 7199)", b)
		run(t, pgx.QueryExecModeCacheStatement, "ROLLBACK")
		for shard, want := range map[string]string{"shard-0": "7100,7110", "shard-1": "7101,7111"} {
			if got := e.direct(t, shard, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM items WHERE id >= 7100"); got != want {
				t.Errorf("items on %s: %q, want %q", shard, got, want)
			}
			if got := e.direct(t, shard, "SELECT coalesce(string_agg(id || '=' || name, ',' ORDER BY id), '') FROM dir WHERE id >= 7100"); got != "7100=session,7110=session" {
				t.Errorf("replicated table dir on %s: %q", shard, got)
			}
		}
		if s0, s1 := e.direct(t, "shard-0", stampsAbove7100), e.direct(t, "shard-1", stampsAbove7100); s0 != s1 || !strings.Contains(s0, "7110") {
			t.Errorf("replicated table stamps: %q on shard-0, %q on shard-1, want the same two rows", s0, s1)
		}
		nonePrepared(t)
	})

	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

const stampsAbove7100 = "SELECT coalesce(string_agg(id || '=' || created_at, ',' ORDER BY id), '') FROM stamps WHERE id >= 7100"

// TestCopyAcrossShards copies rows into a sharded table through the
// sidecar on two shards: each row lands on its key's shard, in one
// transaction per shard committed together; a bad row leaves no shard
// changed; a replicated table gets every row on every shard; COPY TO
// concatenates the shards' rows.
func TestCopyAcrossShards(t *testing.T) {
	e := startRouting(t)
	ctx := context.Background()
	conn := e.sc.connect(t, "")
	a, b := e.teamOn(t, "shard-0"), e.teamOn(t, "shard-1")
	count := func(shard, sql string) int {
		n, err := strconv.Atoi(e.direct(t, shard, sql))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// 100,000 rows in text format, with pgconn's CopyFrom (text stream).
	var data strings.Builder
	want := map[string]int{}
	for i := range 100000 {
		team := a
		if i%3 == 0 {
			team = b
		}
		want[e.shardOf(t, team)]++
		if i == 1 { // a backslash and a newline: a newline in the data
			fmt.Fprintf(&data, "%s\t%d\tnote %d\\\nsecond line\n", uuidText(team), 700000+i, i)
			continue
		}
		fmt.Fprintf(&data, "%s\t%d\tnote %d\\twith a tab\n", uuidText(team), 700000+i, i)
	}
	tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(data.String()), "COPY items (team_id, id, note) FROM STDIN")
	if err != nil || tag.String() != "COPY 100000" {
		t.Fatalf("COPY of 100,000 rows: %q, %v", tag, err)
	}
	for shard, n := range want {
		if got := count(shard, "SELECT count(*) FROM items WHERE id >= 700000"); got != n {
			t.Errorf("%s holds %d copied rows, want %d", shard, got, n)
		}
	}
	if got := e.direct(t, "shard-1", "SELECT note FROM items WHERE id = 700000"); got != "note 0\twith a tab" {
		t.Errorf("escapes in copied text: %q", got)
	}
	if got := e.direct(t, e.shardOf(t, a), "SELECT note FROM items WHERE id = 700001"); got != "note 1\nsecond line" {
		t.Errorf("a backslash-newline in copied text: %q", got)
	}
	if n := count("shard-0", "SELECT count(*) FROM items WHERE id >= 700000 AND team_id <> '"+uuidText(a)+"'"); n != 0 {
		t.Errorf("shard-0 holds %d rows of another team", n)
	}

	// CSV with a header, quoted keys and a quoted newline; NULL keys go
	// to the table's null shard (logs: shard-1).
	csv := "team_id,id\n\"" + uuidText(a) + "\",1\n" + uuidText(b) + ",2\n,3\n"
	if tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(csv), "COPY logs (team_id, id) FROM STDIN WITH (FORMAT csv, HEADER true)"); err != nil || tag.String() != "COPY 3" {
		t.Errorf("CSV COPY: %q, %v", tag, err)
	}
	if got0, got1 := e.direct(t, "shard-0", "SELECT string_agg(id::text, ',' ORDER BY id) FROM logs"), e.direct(t, "shard-1", "SELECT string_agg(id::text, ',' ORDER BY id) FROM logs"); got0 != "1" || got1 != "2,3" {
		t.Errorf("CSV rows: shard-0 %q, shard-1 %q; want 1 and 2,3", got0, got1)
	}

	// A bad key fails the COPY on every shard.
	bad := uuidText(a) + "\t800001\n" + "not-a-uuid\t800002\n" + uuidText(b) + "\t800003\n"
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader(bad), "COPY items (team_id, id) FROM STDIN")
	if code := pgErrCode(err); code != "22P02" {
		t.Errorf("COPY with a malformed key: %v, want 22P02", err)
	}
	for _, shard := range []string{"shard-0", "shard-1"} {
		if n := count(shard, "SELECT count(*) FROM items WHERE id > 800000"); n != 0 {
			t.Errorf("%s kept %d rows of the failed COPY", shard, n)
		}
	}
	// A row failing on one shard (a constraint) leaves the other unchanged too.
	if _, err := conn.Exec(ctx, "INSERT INTO dir (id, name) VALUES (77, 'seven')"); err != nil {
		t.Fatal(err)
	}
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader(uuidText(a)+"\t800004\n"+uuidText(b)+"\t\\N\n"), "COPY items (team_id, id) FROM STDIN")
	if code := pgErrCode(err); code != "23502" {
		t.Errorf("COPY with a NULL id on shard-1: %v, want 23502", err)
	}
	if n := count("shard-0", "SELECT count(*) FROM items WHERE id = 800004"); n != 0 {
		t.Errorf("shard-0 kept the row of a COPY that failed on shard-1")
	}

	// Into a replicated table: every shard gets every row.
	if tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("80\teighty\n81\teighty-one\n"), "COPY dir FROM STDIN"); err != nil || tag.String() != "COPY 2" {
		t.Errorf("COPY into a replicated table: %q, %v; want COPY 2", tag, err)
	}
	for _, shard := range []string{"shard-0", "shard-1"} {
		if n := count(shard, "SELECT count(*) FROM dir WHERE id IN (80, 81)"); n != 2 {
			t.Errorf("%s holds %d of the 2 copied replicated rows", shard, n)
		}
	}

	// COPY TO STDOUT of rows on both shards (events: keyless policy all):
	// concatenated, one header.
	for i, team := range []pgtype.UUID{a, b, b} {
		if _, err := conn.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, $2)", team, i+1); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	tag, err = conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT id FROM events ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)")
	lines := strings.Fields(out.String())
	slices.Sort(lines)
	if err != nil || tag.String() != "COPY 3" || strings.Join(lines, ",") != "1,2,3,id" {
		t.Errorf("COPY TO of both shards: %q, %v, %q; want COPY 3 and one header", tag, err, out.String())
	}
	out.Reset()
	if _, err := conn.PgConn().CopyTo(ctx, &out, "COPY events TO STDOUT WITH (FORMAT binary)"); pgErrCode(err) != "0A000" {
		t.Errorf("binary COPY TO across shards: %v, want 0A000", err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("the session after the COPYs: %v", err)
	}
	nonePrepared := e.direct(t, "shard-0", "SELECT count(*) FROM pg_prepared_xacts") + e.direct(t, "shard-1", "SELECT count(*) FROM pg_prepared_xacts")
	if nonePrepared != "00" {
		t.Errorf("prepared transactions left: %s", nonePrepared)
	}
}
