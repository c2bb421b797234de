package app

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// testTwoPhase checks that a write spanning shards commits in two phases:
// it commits on both shards leaving nothing prepared, a failure at PREPARE
// on one shard rolls both back, and the parts a crashed sidecar leaves
// prepared are finished by the recovery from the anchor's decision (the
// sidecar runs with TWO_PHASE_TIMEOUT=2s). a is a team on shard-0 (the
// anchor), b one on shard-1.
func testTwoPhase(t *testing.T, e *routingEnv, a, b pgtype.UUID) {
	ctx := context.Background()
	conn := e.sc.connect(t, "")
	for i, team := range []pgtype.UUID{a, b} {
		if _, err := conn.Exec(ctx, "INSERT INTO events (team_id, id) VALUES ($1, $2)", team, 301+i); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(shard string) string {
		return e.direct(t, shard, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM events")
	}
	prepared := func(shard string) string { return e.direct(t, shard, "SELECT count(*) FROM pg_prepared_xacts") }
	expect := func(what, want0, want1 string) {
		t.Helper()
		if got0, got1 := ids("shard-0"), ids("shard-1"); got0 != want0 || got1 != want1 {
			t.Errorf("%s: events %q on shard-0 and %q on shard-1, want %q and %q", what, got0, got1, want0, want1)
		}
	}

	// As the first statement of a session (psql -c), in the simple and
	// the extended protocol: a session starts outside any transaction.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		fresh := e.sc.connect(t, "")
		tag, err := fresh.Exec(ctx, "UPDATE events SET id = id + 5", mode)
		if err != nil || tag.String() != "UPDATE 2" {
			t.Errorf("write spanning shards as a session's first statement (%v): %q, %v; want UPDATE 2", mode, tag, err)
		}
		fresh.Close(ctx)
	}
	expect("after two committed writes", "311", "312")
	nonePrepared := func(after string) {
		t.Helper()
		for _, shard := range []string{"shard-0", "shard-1"} {
			if n := prepared(shard); n != "0" {
				t.Errorf("%s holds %s prepared transactions after %s, want 0", shard, n, after)
			}
		}
	}
	nonePrepared("a commit")

	// failAtPrepare runs a write spanning shards while shard-1 has a
	// deferred constraint trigger running body: it fires at PREPARE, after
	// the anchor (shard-0) prepared. The client must get code and both
	// shards must be left as they were.
	failAtPrepare := func(what, body, code string) {
		t.Helper()
		e.direct(t, "shard-1", `CREATE FUNCTION at_prepare() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN `+body+` RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER at_prepare AFTER UPDATE ON events DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION at_prepare();`)
		defer e.direct(t, "shard-1", "DROP TRIGGER at_prepare ON events; DROP FUNCTION at_prepare();")
		_, err := conn.Exec(ctx, "UPDATE events SET id = id + 1")
		if got := pgErrCode(err); got != code {
			t.Errorf("%s: %v, want %s", what, err, code)
		}
		expect("after "+what, "311", "312")
		nonePrepared(what)
	}
	// A deferred constraint failing: both roll back, the client gets its
	// error.
	failAtPrepare("a write failing at PREPARE on one shard",
		`IF NEW.id = 313 THEN RAISE EXCEPTION 'no 313' USING ERRCODE = '23514'; END IF;`, "23514")
	// A PREPARE slower than TWO_PHASE_TIMEOUT: meanwhile the recovery
	// presumes the prepared anchor abandoned and rolls it back, so the
	// sidecar's COMMIT PREPARED there fails and it rolls shard-1 back too;
	// the client gets 40000 (retryable).
	failAtPrepare("a write whose anchor the recovery rolled back", `PERFORM pg_sleep(3);`, "40000")

	// What a sidecar dying halfway leaves behind, made by hand: each part
	// prepared as the sidecar's role, the anchor's with its decision row.
	prepare := func(shard, gid, sql string, anchor bool) {
		q := `BEGIN; SET LOCAL ROLE "brownie-fastapi-server"; ` + sql + "; "
		if anchor {
			q += "INSERT INTO brownie_sidecar.commit_log (gid) VALUES ('" + gid + "'); "
		}
		e.direct(t, shard, q+"PREPARE TRANSACTION '"+gid+"';")
	}
	// The anchor committed, shard-1's part is still prepared: committed.
	prepare("shard-0", "brownie:01:shard-0", "UPDATE events SET id = 321 WHERE id = 311", true)
	prepare("shard-1", "brownie:01:shard-0", "UPDATE events SET id = 322 WHERE id = 312", false)
	e.direct(t, "shard-0", "COMMIT PREPARED 'brownie:01:shard-0';")
	// Only shard-1's part was prepared (the anchor rolled back): rolled back.
	prepare("shard-1", "brownie:02:shard-0", "INSERT INTO events (team_id, id) VALUES ('"+uuidText(b)+"', 399)", false)
	waitFor(t, 10*time.Second, "recovery of the parts whose anchor decided", func() bool { return prepared("shard-1") == "0" })
	expect("after the recovery", "321", "322")

	// Both parts prepared and the anchor abandoned: rolled back once the
	// anchor has been prepared for TWO_PHASE_TIMEOUT, not before.
	start := time.Now()
	prepare("shard-0", "brownie:03:shard-0", "UPDATE events SET id = 331 WHERE id = 321", true)
	prepare("shard-1", "brownie:03:shard-0", "UPDATE events SET id = 332 WHERE id = 322", false)
	waitFor(t, 15*time.Second, "recovery of an abandoned write", func() bool {
		return prepared("shard-0") == "0" && prepared("shard-1") == "0"
	})
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("an abandoned anchor was rolled back after %s, before TWO_PHASE_TIMEOUT (2s)", took)
	}
	expect("after rolling back an abandoned write", "321", "322")

	// Decision rows no prepared part needs are deleted.
	waitFor(t, 10*time.Second, "decision rows deleted", func() bool {
		return e.direct(t, "shard-0", "SELECT count(*) FROM brownie_sidecar.commit_log") == "0"
	})
	_, body := e.sc.get(t, "/metrics")
	// Counters are the sidecar's since it started (earlier subtests commit
	// writes spanning shards too); the recovery acts only here.
	for _, c := range []struct {
		series  string
		want    float64
		atLeast bool
	}{
		{`brownie_sidecar_two_phase_commits_total{outcome="committed"}`, 2, true},   // the fresh sessions' writes
		{`brownie_sidecar_two_phase_commits_total{outcome="rolled_back"}`, 2, true}, // the failed PREPARE, the lost race
		{`brownie_sidecar_two_phase_commits_total{outcome="unknown"}`, 0, false},
		{`brownie_sidecar_two_phase_recovered_total{action="committed"}`, 1, false},
		{`brownie_sidecar_two_phase_recovered_total{action="rolled_back"}`, 4, false},
	} {
		v, ok := metricValue(body, c.series)
		if !ok || v < c.want || (!c.atLeast && v != c.want) {
			t.Errorf("metric %s = %v (present %v), want %v (at least: %v)", c.series, v, ok, c.want, c.atLeast)
		}
	}
	for _, shard := range []string{"shard-0", "shard-1"} {
		e.direct(t, shard, "DELETE FROM events;")
	}
}
