package app

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/router"
)

// routingSchema is created on every shard's primary: a table sharded by
// team per keyless policy, a team table sharded by its id, and a
// replicated directory table.
const routingSchema = `
CREATE TABLE items  (team_id uuid NOT NULL, id bigint NOT NULL, note text);
CREATE TABLE events (team_id uuid NOT NULL, id bigint NOT NULL);
CREATE TABLE logs   (team_id uuid, id bigint NOT NULL);
CREATE TABLE teams2 (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE dir    (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE stamps (id int PRIMARY KEY, note text, created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz DEFAULT CURRENT_TIMESTAMP, day date DEFAULT current_date);
INSERT INTO dir VALUES (1, 'one'), (2, 'two');
GRANT ALL ON items, events, logs, teams2, dir, stamps TO "brownie-fastapi-server";
ALTER TABLE stamps OWNER TO "brownie-fastapi-server";
`

// routingMap is the shard map of the routing tests; %s are the hosts, then
// the overrides block.
func routingMap(srv *pgtest.Server, overrides string) string {
	h := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	return fmt.Sprintf(`key_type: uuid
unlisted_tables: reject
shards:
  - name: shard-0
    primary: %s
    replicas: [%s]
  - name: shard-1
    primary: %s
    replicas: [%s]
tables:
  items:  {sharded_by: team_id, keyless: reject}
  events: {sharded_by: team_id, keyless: all}
  logs:   {sharded_by: team_id, keyless: default, default_shard: shard-1, null_shard: shard-1}
  teams2: {sharded_by: id, keyless: reject}
  moods:  {sharded_by: team_id, keyless: reject}
  dir: replicated
  stamps: replicated
overrides: {%s}
`, h(srv.Shards[0].Primary.Port()), h(srv.Shards[0].Replica.Port()),
		h(srv.Shards[1].Primary.Port()), h(srv.Shards[1].Replica.Port()), overrides)
}

// writeFileAtomic replaces path the way Kubernetes and editors do: a new
// file renamed over the old one.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newUUID() pgtype.UUID {
	var u pgtype.UUID
	_, _ = rand.Read(u.Bytes[:])
	u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
	u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
	u.Valid = true
	return u
}

func uuidText(u pgtype.UUID) string {
	b := u.Bytes
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// routingEnv is a two-shard cluster, each shard with a streaming replica,
// the sidecar routing over it, and a router with the same map to predict
// placement.
type routingEnv struct {
	srv     *pgtest.Server
	sc      *sidecar
	rt      *router.Router
	mapFile string
	ports   map[int]string // server port → "shard-N/primary|replica"
}

func (e *routingEnv) shardOf(t *testing.T, team pgtype.UUID) string {
	t.Helper()
	return shardOf(t, e.rt, team)
}

// teamOn returns a new team placed (by hash) on shard.
func (e *routingEnv) teamOn(t *testing.T, shard string) pgtype.UUID {
	t.Helper()
	return teamOn(t, e.rt, shard)
}

// shardOf returns the shard rt places team on.
func shardOf(t *testing.T, rt *router.Router, team pgtype.UUID) string {
	t.Helper()
	k, err := rt.ParseKey(uuidText(team))
	if err != nil {
		t.Fatal(err)
	}
	return rt.Place(k)
}

// teamOn returns a new team id that rt places (by hash) on shard.
func teamOn(t *testing.T, rt *router.Router, shard string) pgtype.UUID {
	t.Helper()
	for {
		if u := newUUID(); shardOf(t, rt, u) == shard {
			return u
		}
	}
}

// testRouter returns a router for the shard map text.
func testRouter(t *testing.T, text string) *router.Router {
	t.Helper()
	m, err := router.ParseMap([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func (e *routingEnv) primary(shard string) *pgtest.Shard {
	i, _ := strconv.Atoi(strings.TrimPrefix(shard, "shard-"))
	return &e.srv.Shards[i]
}

// direct runs sql on a shard's primary and returns its output.
func (e *routingEnv) direct(t *testing.T, shard, sql string) string {
	t.Helper()
	out, err := e.primary(shard).Primary.Exec(context.Background(), "brownie_metadata", sql)
	if err != nil {
		t.Fatalf("%s: %s: %v", shard, sql, err)
	}
	return strings.TrimSpace(out)
}

// replayed waits until every replica has replayed its primary's writes.
func (e *routingEnv) replayed(t *testing.T) {
	t.Helper()
	for _, sh := range e.srv.Shards {
		if err := sh.Replica.WaitReplayed(context.Background(), sh.Primary); err != nil {
			t.Fatal(err)
		}
	}
}

// servedBy runs a routed statement that reports which server ran it.
func servedBy(t *testing.T, e *routingEnv, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (string, bool) {
	t.Helper()
	var port int
	var rec bool
	if err := q.QueryRow(ctx10(t), sql, args...).Scan(&port, &rec); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return e.ports[port], rec
}

func startRouting(t *testing.T) *routingEnv {
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Replica: true, Shards: 2})
	ctx := context.Background()
	for i, sh := range srv.Shards {
		if _, err := sh.Primary.Exec(ctx, "brownie_metadata", routingSchema); err != nil {
			t.Fatalf("shard %d schema: %v", i, err)
		}
		if err := sh.Replica.WaitReplayed(ctx, sh.Primary); err != nil {
			t.Fatal(err)
		}
	}
	e := &routingEnv{srv: srv, mapFile: filepath.Join(t.TempDir(), "shardmap.yaml"), ports: map[int]string{}}
	for i, sh := range srv.Shards {
		e.ports[sh.Primary.Port()] = fmt.Sprintf("shard-%d/primary", i)
		e.ports[sh.Replica.Port()] = fmt.Sprintf("shard-%d/replica", i)
	}
	writeFileAtomic(t, e.mapFile, routingMap(srv, ""))
	m, err := router.ParseMap([]byte(routingMap(srv, "")))
	if err != nil {
		t.Fatal(err)
	}
	if e.rt, err = router.New(m); err != nil {
		t.Fatal(err)
	}
	e.sc = startSidecar(t, srv, map[string]string{
		"SHARD_MAP_FILE":        e.mapFile,
		"POOL_MODE":             "transaction",
		"POOL_SIZE":             "8",
		"HEALTH_CHECK_INTERVAL": "100ms",
		"HEALTH_CHECK_TIMEOUT":  "2s",
		"REPLICA_BAN_TIME":      "1s",
		"MAX_REPLICA_LAG":       "2s",
		"MAX_REPLICA_LAG_BYTES": "1024",
		// Every reuse is checked, so a read right after a host dies never
		// lands on its dead connection (with the default 1s, a connection
		// used less than a second before is reused unchecked and that one
		// read fails with 08006, as with PgBouncer's server_check_delay).
		"POOL_CHECK_DELAY":            "0",
		"TWO_PHASE_TIMEOUT":           "2s",
		"TWO_PHASE_RECOVERY_INTERVAL": "200ms",
	})
	waitFor(t, 15*time.Second, "sidecar ready", func() bool {
		code, _ := e.sc.get(t, "/ready")
		return code == 200
	})
	return e
}

// TestTeamRouting runs the routing scenarios on one two-shard cluster, the
// destructive ones (killed replica, promotion) last.
func TestTeamRouting(t *testing.T) {
	e := startRouting(t)
	conn := e.sc.connect(t, "")
	ctx := context.Background()

	a, a2 := e.teamOn(t, "shard-0"), e.teamOn(t, "shard-0")
	b := e.teamOn(t, "shard-1")

	t.Run("PreparedStatementsOverUserTypesRunOnEveryShard", func(t *testing.T) {
		// The shards give one type different OIDs, as shards with
		// different histories do; a statement prepared on one shard runs
		// on the other as it is, with no 0A000 for a changed result.
		e.direct(t, "shard-1", "CREATE TYPE oid_shift AS ENUM ('x')")
		for _, shard := range []string{"shard-0", "shard-1"} {
			e.direct(t, shard, `CREATE TYPE mood AS ENUM ('calm', 'cross'); CREATE TABLE moods (team_id uuid NOT NULL, m mood NOT NULL); GRANT ALL ON moods TO "brownie-fastapi-server"`)
		}
		if o0, o1 := e.direct(t, "shard-0", "SELECT 'mood'::regtype::oid"), e.direct(t, "shard-1", "SELECT 'mood'::regtype::oid"); o0 == o1 {
			t.Fatalf("mood has OID %s on both shards: the test would show nothing", o0)
		}
		want := map[pgtype.UUID]string{a: "calm", b: "cross"}
		for team, m := range want {
			if _, err := conn.Exec(ctx, "INSERT INTO moods (team_id, m) VALUES ($1, $2)", team, m); err != nil {
				t.Fatal(err)
			}
		}
		e.replayed(t)
		c := e.sc.connect(t, "") // pgx caches its statements: prepared once, bound on both shards
		for range 3 {
			for _, team := range []pgtype.UUID{a, b} {
				var m string
				if err := c.QueryRow(ctx, "SELECT m FROM moods WHERE team_id = $1", team).Scan(&m); err != nil || m != want[team] {
					t.Fatalf("team on %s: %q, %v; want %q", e.shardOf(t, team), m, err, want[team])
				}
			}
		}
	})

	t.Run("RowsLandOnThePredictedShard", func(t *testing.T) {
		want := map[string]int{}
		for i := range 40 {
			team := newUUID()
			if _, err := conn.Exec(ctx, "INSERT INTO items (team_id, id, note) VALUES ($1, $2, 'x')", team, i); err != nil {
				t.Fatal(err)
			}
			want[e.shardOf(t, team)]++
		}
		// A multi-row INSERT with literals, one team.
		if _, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO items (team_id, id) VALUES ('%s', 100), ('%s', 101)", uuidText(b), uuidText(b))); err != nil {
			t.Fatal(err)
		}
		want["shard-1"] += 2
		for _, shard := range []string{"shard-0", "shard-1"} {
			rows := e.direct(t, shard, "SELECT team_id FROM items")
			n := 0
			for _, line := range strings.Fields(rows) {
				k, err := e.rt.ParseKey(line)
				if err != nil {
					t.Fatal(err)
				}
				if got := e.rt.Place(k); got != shard {
					t.Errorf("team %s is on %s, placement says %s", line, shard, got)
				}
				n++
			}
			if n != want[shard] {
				t.Errorf("%s holds %d rows, want %d", shard, n, want[shard])
			}
		}
	})

	// Known rows for the key tests: a has 3 items, a2 has 2, b the 2 above.
	for i := range 3 {
		if _, err := conn.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, $2)", a, 1000+i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if _, err := conn.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, $2)", a2, 2000+i); err != nil {
			t.Fatal(err)
		}
	}
	for _, team := range []pgtype.UUID{a, a2, b} {
		if _, err := conn.Exec(ctx, "INSERT INTO teams2 (id, name) VALUES ($1, 'team')", team); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("KeysInEveryForm", func(t *testing.T) {
		count := func(sql string, args ...any) int {
			t.Helper()
			var n int
			if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			return n
		}
		cases := []struct {
			name string
			sql  string
			args []any
			want int
		}{
			{"literal", fmt.Sprintf("SELECT count(*) FROM items WHERE team_id = '%s'", uuidText(a)), nil, 3},
			{"binary parameter", "SELECT count(*) FROM items WHERE team_id = $1", []any{a}, 3},
			{"cast parameter", "SELECT count(*) FROM items WHERE team_id = $1::UUID", []any{b}, 2},
			{"join", "SELECT count(*) FROM items i JOIN teams2 t ON t.id = i.team_id WHERE i.team_id = $1", []any{a}, 3},
			{"subquery", "SELECT count(*) FROM (SELECT * FROM items WHERE team_id = $1) s", []any{a2}, 2},
			{"cte", "WITH x AS (SELECT * FROM items WHERE team_id = $1) SELECT count(*) FROM x", []any{a}, 3},
			{"in", "SELECT count(*) FROM items WHERE team_id IN ($1, $2)", []any{a, a2}, 5},
			{"any", "SELECT count(*) FROM items WHERE team_id = ANY($1)", []any{[]pgtype.UUID{a, a2}}, 5},
			{"key column of the joined table", "SELECT count(*) FROM teams2 t JOIN items i ON i.team_id = t.id WHERE t.id = $1", []any{b}, 2},
		}
		for _, c := range cases {
			if got := count(c.sql, c.args...); got != c.want {
				t.Errorf("%s: count %d, want %d", c.name, got, c.want)
			}
		}
		// Text-format parameters, as psycopg 3 sends them.
		res := conn.PgConn().ExecParams(ctx, "SELECT count(*) FROM items WHERE team_id = $1::uuid",
			[][]byte{[]byte(uuidText(a))}, nil, []int16{0}, []int16{0}).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "3" {
			t.Errorf("text parameter: %v %q", res.Err, res.Rows)
		}
	})

	t.Run("Hints", func(t *testing.T) {
		e.replayed(t) // reads may be served by replicas
		c := e.sc.connect(t, "")
		var n int
		if _, err := c.Exec(ctx, fmt.Sprintf("SET brownie.team_id = '%s'", uuidText(a))); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want, _ := strconv.Atoi(e.direct(t, "shard-0", "SELECT count(*) FROM items")); n != want {
			t.Errorf("keyless count under brownie.team_id = %d, shard-0 has %d", n, want)
		}
		err := c.QueryRow(ctx, "SELECT count(*) FROM items WHERE team_id = $1", b).Scan(&n)
		if code := pgErrCode(err); code != "42501" {
			t.Errorf("another team under brownie.team_id: %v (code %q), want 42501", err, code)
		}
		if _, err := c.Exec(ctx, "RESET brownie.team_id"); err != nil {
			t.Fatal(err)
		}
		err = c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n)
		if code := pgErrCode(err); code != "08004" || !strings.Contains(err.Error(), "items") {
			t.Errorf("keyless after RESET: %v, want 08004 naming items", err)
		}
		if err := c.QueryRow(ctx, "/* brownie:shard=shard-1 */ SELECT count(*) FROM items").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want, _ := strconv.Atoi(e.direct(t, "shard-1", "SELECT count(*) FROM items")); n != want {
			t.Errorf("comment hint shard-1: %d, want %d", n, want)
		}
		if err := c.QueryRow(ctx, fmt.Sprintf("/* brownie:team_id=%s */ SELECT count(*) FROM items WHERE id >= 1000", uuidText(a))).Scan(&n); err != nil || n != 5 {
			t.Errorf("comment team hint: %d, %v; want 5", n, err)
		}
		// SET LOCAL lasts for its transaction only.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL brownie.team_id = '%s'", uuidText(b))); err != nil {
			t.Fatal(err)
		}
		var port int
		var rec bool
		if err := tx.QueryRow(ctx, "SELECT inet_server_port(), pg_is_in_recovery() FROM items LIMIT 1").Scan(&port, &rec); err != nil {
			t.Fatal(err)
		}
		if e.ports[port] != "shard-1/primary" {
			t.Errorf("SET LOCAL team on shard-1: served by %s", e.ports[port])
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		err = c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n)
		if code := pgErrCode(err); code != "08004" {
			t.Errorf("keyless after the SET LOCAL transaction: %v, want 08004", err)
		}
		// Invalid hints are refused.
		if _, err := c.Exec(ctx, "SET brownie.team_id = 'not-a-uuid'"); pgErrCode(err) != "22P02" {
			t.Errorf("invalid team hint: %v, want 22P02", err)
		}
		if _, err := c.Exec(ctx, "SET brownie.shard = 'shard-9'"); pgErrCode(err) != "42704" {
			t.Errorf("unknown shard hint: %v, want 42704", err)
		}
		// Startup options.
		s := e.sc.connect(t, fmt.Sprintf("options='-c brownie.team_id=%s'", uuidText(b)))
		if err := s.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want, _ := strconv.Atoi(e.direct(t, "shard-1", "SELECT count(*) FROM items")); n != want {
			t.Errorf("startup team hint: %d, want %d", n, want)
		}
	})

	t.Run("OverridesAndKeylessPolicies", func(t *testing.T) {
		over := e.teamOn(t, "shard-0")
		writeFileAtomic(t, e.mapFile, routingMap(e.srv, fmt.Sprintf("%q: shard-1", uuidText(over))))
		waitFor(t, 10*time.Second, "override to take effect", func() bool {
			where, _ := servedBy(t, e, conn, "SELECT inet_server_port(), pg_is_in_recovery() FROM (SELECT count(*) FROM items WHERE team_id = $1) s", over)
			return strings.HasPrefix(where, "shard-1")
		})
		if _, err := conn.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 7)", over); err != nil {
			t.Fatal(err)
		}
		if got := e.direct(t, "shard-1", fmt.Sprintf("SELECT count(*) FROM items WHERE team_id = '%s'", uuidText(over))); got != "1" {
			t.Errorf("overridden team's row on shard-1: %s, want 1", got)
		}
		writeFileAtomic(t, e.mapFile, routingMap(e.srv, ""))

		var n int
		e.direct(t, "shard-0", "INSERT INTO logs VALUES (NULL, 1)")
		e.direct(t, "shard-1", "INSERT INTO logs VALUES (NULL, 1), (NULL, 2)")
		e.replayed(t)
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM logs").Scan(&n); err != nil || n != 2 {
			t.Errorf("keyless policy default (shard-1): %d, %v; want 2", n, err)
		}
		// Replicated tables read from any shard; no table at all too.
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM dir").Scan(&n); err != nil || n != 2 {
			t.Errorf("replicated read: %d, %v", n, err)
		}
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
			t.Errorf("SELECT 1: %v", err)
		}
		_, err := conn.Exec(ctx, "SELECT * FROM nowhere")
		if code := pgErrCode(err); code != "08004" {
			t.Errorf("unlisted table: %v, want 08004", err)
		}
	})

	t.Run("KeylessAllFansOut", func(t *testing.T) { testFanOut(t, e, a, b) })
	t.Run("WritesSpanningShardsCommitInTwoPhases", func(t *testing.T) { testTwoPhase(t, e, a, b) })

	const where = "SELECT inet_server_port(), pg_is_in_recovery() FROM (SELECT count(*) FROM items WHERE team_id = $1) s"

	t.Run("ReadsReachReplicas", func(t *testing.T) {
		c := e.sc.connect(t, "")
		waitFor(t, 10*time.Second, "a read served by shard-1's replica", func() bool {
			w, rec := servedBy(t, e, c, where, b)
			return w == "shard-1/replica" && rec
		})
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if w, rec := servedBy(t, e, tx, where, b); w != "shard-1/primary" || rec {
			t.Errorf("read in a read-write transaction served by %s", w)
		}
		_ = tx.Rollback(ctx)
		ro, err := c.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			t.Fatal(err)
		}
		if w, _ := servedBy(t, e, ro, where, b); w != "shard-1/replica" {
			t.Errorf("read in a READ ONLY transaction served by %s", w)
		}
		_ = ro.Rollback(ctx)
		if w, _ := servedBy(t, e, c, "/* brownie:role=primary */ "+where, b); w != "shard-1/primary" {
			t.Errorf("brownie:role=primary read served by %s", w)
		}
		_, metrics := e.sc.get(t, "/metrics")
		for _, m := range []string{
			`brownie_sidecar_query_duration_seconds_count{role="replica",shard="shard-1"}`,
			`brownie_sidecar_route_decisions_total{kind="one",reason="key",role="replica"}`,
			`brownie_sidecar_host_up{addr=`,
		} {
			if !strings.Contains(metrics, m) {
				t.Errorf("metrics lack %s", m)
			}
		}
	})

	t.Run("ReadYourWrites", func(t *testing.T) {
		c := e.sc.connect(t, "")
		onReplica := 0
		for i := range 300 {
			id := 50000 + i
			if _, err := c.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, $2)", b, id); err != nil {
				t.Fatal(err)
			}
			var n int
			var rec bool
			if err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM items WHERE team_id = $1 AND id = $2", b, id).Scan(&n, &rec); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("iteration %d: the session's own write is not visible (replica %v)", i, rec)
			}
			if rec {
				onReplica++
			}
		}
		t.Logf("read-your-writes: %d of 300 reads right after a write were served by a caught-up replica", onReplica)
		// Once the replica has replayed the session's last write, its reads
		// go there again, and see it.
		waitFor(t, 10*time.Second, "a read of the session's own write served by the replica", func() bool {
			var n int
			var rec bool
			if err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM items WHERE team_id = $1 AND id = $2", b, 50299).Scan(&n, &rec); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("the session's own write is not visible (replica %v)", rec)
			}
			return rec
		})
	})

	t.Run("LaggingReplicaIsSkipped", func(t *testing.T) {
		rep := e.srv.Shards[1].Replica
		if _, err := rep.Exec(ctx, "postgres", "SELECT pg_wal_replay_pause()"); err != nil {
			t.Fatal(err)
		}
		e.direct(t, "shard-1", "INSERT INTO events SELECT gen_random_uuid(), g FROM generate_series(1, 1000) g")
		c := e.sc.connect(t, "")
		waitFor(t, 10*time.Second, "reads to leave the paused replica", func() bool {
			w, _ := servedBy(t, e, c, where, b)
			return w == "shard-1/primary"
		})
		for range 20 {
			if w, _ := servedBy(t, e, c, where, b); w != "shard-1/primary" {
				t.Fatalf("read served by %s while the replica lags", w)
			}
		}
		if _, err := rep.Exec(ctx, "postgres", "SELECT pg_wal_replay_resume()"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "reads to return to the caught-up replica", func() bool {
			w, _ := servedBy(t, e, c, where, b)
			return w == "shard-1/replica"
		})
	})

	t.Run("SessionModeKeepsOneConnectionPerTarget", func(t *testing.T) {
		sc := startSidecar(t, e.srv, map[string]string{
			"SHARD_MAP_FILE": e.mapFile, "POOL_MODE": "session", "HEALTH_CHECK_INTERVAL": "100ms",
		})
		waitFor(t, 15*time.Second, "session-mode sidecar ready", func() bool {
			code, _ := sc.get(t, "/ready")
			return code == 200
		})
		c := sc.connect(t, "")
		if _, err := c.Exec(ctx, "SET application_name = 'routed-session'"); err != nil {
			t.Fatal(err)
		}
		const who = "SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('application_name') FROM (SELECT count(*) FROM items WHERE team_id = $1) s"
		read := func() (int, bool, string) {
			var pid int
			var rec bool
			var app string
			if err := c.QueryRow(ctx, who, b).Scan(&pid, &rec, &app); err != nil {
				t.Fatal(err)
			}
			return pid, rec, app
		}
		var replicaPID int
		waitFor(t, 10*time.Second, "a read on the replica", func() bool {
			pid, rec, _ := read()
			replicaPID = pid
			return rec
		})
		if _, err := c.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 60000)", b); err != nil {
			t.Fatal(err)
		}
		var primaryPID int
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid() FROM items WHERE team_id = $1 FOR UPDATE", b).Scan(&primaryPID); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "reads back on the replica", func() bool {
			pid, rec, app := read()
			if app != "routed-session" {
				t.Fatalf("application_name on the %v connection: %q", rec, app)
			}
			if rec && pid != replicaPID {
				t.Fatalf("the session came back to another replica backend (%d, was %d)", pid, replicaPID)
			}
			return rec
		})
		var again int
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid() FROM items WHERE team_id = $1 FOR UPDATE", b).Scan(&again); err != nil {
			t.Fatal(err)
		}
		if again != primaryPID {
			t.Errorf("the session's primary backend changed from %d to %d", primaryPID, again)
		}
		// A fan-out in session mode runs on connections carrying the
		// session's settings, kept for the session: the same backends again.
		fan := func() []string {
			rows, err := c.Query(ctx, "/* brownie:role=primary */ SELECT pg_backend_pid()::text || ' ' || current_setting('application_name') FROM (SELECT count(*) FROM events) s")
			if err != nil {
				t.Fatal(err)
			}
			got, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			return got
		}
		first := fan()
		if len(first) != 2 || !strings.HasSuffix(first[0], " routed-session") || !strings.HasSuffix(first[1], " routed-session") {
			t.Errorf("session-mode fan-out: %q, want two shards' rows with application_name routed-session", first)
		}
		if second := fan(); !slices.Equal(first, second) {
			t.Errorf("session-mode fan-out changed backends: %q then %q", first, second)
		}
	})

	t.Run("MapReloadUnderLoad", func(t *testing.T) {
		d := e.teamOn(t, "shard-0")
		var failed, done atomic.Int64
		var onNew atomic.Bool
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			c := e.sc.connect(t, "")
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					var port int
					var rec bool
					if err := c.QueryRow(ctx, where, d).Scan(&port, &rec); err != nil {
						failed.Add(1)
						t.Errorf("query during reload: %v", err)
						return
					}
					done.Add(1)
					if strings.HasPrefix(e.ports[port], "shard-1") {
						onNew.Store(true)
					}
				}
			}()
		}
		waitFor(t, 5*time.Second, "load running", func() bool { return done.Load() > 50 })
		writeFileAtomic(t, e.mapFile, routingMap(e.srv, fmt.Sprintf("%q: shard-1", uuidText(d))))
		waitFor(t, 10*time.Second, "the override to route the team to shard-1", onNew.Load)
		before := done.Load()
		waitFor(t, 5*time.Second, "more queries after the reload", func() bool { return done.Load() > before+50 })
		close(stop)
		wg.Wait()
		if failed.Load() != 0 {
			t.Fatalf("%d queries failed during the reload", failed.Load())
		}
		t.Logf("%d queries, none failed, across the reload", done.Load())

		// A broken file is refused; the previous map keeps serving.
		writeFileAtomic(t, e.mapFile, "key_type: nope\nshards: []\n")
		waitFor(t, 10*time.Second, "readiness to report the refused map", func() bool {
			code, body := e.sc.get(t, "/ready")
			return code == 503 && strings.Contains(body, "shard_map")
		})
		c := e.sc.connect(t, "")
		if w, _ := servedBy(t, e, c, where, d); !strings.HasPrefix(w, "shard-1") {
			t.Errorf("after a refused map the team is served by %s, want the previous map's shard-1", w)
		}
		if _, body := e.sc.get(t, "/metrics"); !strings.Contains(body, "brownie_sidecar_shard_map_valid 0") {
			t.Errorf("metrics do not report the refused map")
		}
		writeFileAtomic(t, e.mapFile, routingMap(e.srv, ""))
		waitFor(t, 10*time.Second, "readiness after the map is fixed", func() bool {
			code, _ := e.sc.get(t, "/ready")
			return code == 200
		})
	})

	t.Run("KilledReplicaSendsReadsToThePrimary", func(t *testing.T) {
		c := e.sc.connect(t, "")
		waitFor(t, 10*time.Second, "a read on shard-1's replica", func() bool {
			w, _ := servedBy(t, e, c, where, b)
			return w == "shard-1/replica"
		})
		if err := e.srv.Shards[1].Replica.Kill(); err != nil {
			t.Fatal(err)
		}
		for i := range 30 {
			w, _ := servedBy(t, e, c, where, b) // must not fail
			if w != "shard-1/primary" {
				t.Fatalf("read %d after the replica died served by %s", i, w)
			}
		}
	})

	t.Run("PromotedReplicaTakesWrites", func(t *testing.T) {
		sh := e.srv.Shards[0]
		if err := sh.Primary.Kill(); err != nil {
			t.Fatal(err)
		}
		// A write with the primary down waits for a primary (FAILOVER_WAIT)
		// instead of failing, and runs on the replica once it is promoted.
		c := e.sc.connect(t, "")
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Exec(ctx, "INSERT INTO items (team_id, id) VALUES ($1, 1)", a)
			wrote <- err
		}()
		waitFor(t, 10*time.Second, "the write to wait for a primary", func() bool {
			_, body := e.sc.get(t, "/metrics")
			return strings.Contains(body, `brownie_sidecar_failover_waiting{shard="shard-0"} 1`)
		})
		if code, _ := e.sc.get(t, "/ready"); code != 200 {
			t.Errorf("/ready = %d while shard-0 waits for a primary", code)
		}
		select {
		case err := <-wrote:
			t.Fatalf("the write returned (%v) with shard-0's primary down", err)
		default:
		}
		if err := sh.Replica.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-wrote:
			if err != nil {
				t.Fatalf("the waiting write failed after the promotion: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the waiting write did not run after the promotion")
		}
		got, err := sh.Replica.Exec(ctx, "brownie_metadata", fmt.Sprintf("SELECT count(*) FROM items WHERE team_id = '%s' AND id = 1", uuidText(a)))
		if err != nil || strings.TrimSpace(got) != "1" {
			t.Errorf("the waited write on the promoted replica: %q, %v", got, err)
		}
		c2 := e.sc.connect(t, "")
		tx, err := c2.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if w, rec := servedBy(t, e, tx, where, a); w != "shard-0/replica" || rec {
			t.Errorf("writes after promotion served by %s (in recovery %v), want the promoted shard-0 replica", w, rec)
		}
	})
}
