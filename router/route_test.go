package router

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

type routeCase struct {
	name    string
	sql     string
	params  [][]byte
	formats []int16
	oids    []uint32
	facts   SessionFacts

	kind   Kind
	shards []string
	reason Reason
	attrs  string // "ro replica primary broadcast", those that hold, in that order
	code   pgerr.Code
	msg    []string // substrings of the error's message, detail and hint
}

func attrs(d Decision) string {
	var a []string
	for _, x := range []struct {
		on   bool
		name string
	}{{d.ReadOnly, "ro"}, {d.Replica, "replica"}, {d.ForcePrimary, "primary"}, {d.Broadcast, "broadcast"}} {
		if x.on {
			a = append(a, x.name)
		}
	}
	return strings.Join(a, " ")
}

func one(s string) []string { return []string{s} }

// runRouteCases routes every case, checks its expectations and returns a
// transcript of decisions (Explain) and errors for a golden file.
func runRouteCases(t *testing.T, r *Router, cases []routeCase) string {
	t.Helper()
	var out strings.Builder
	for _, c := range cases {
		d, err := r.Route(c.facts, StmtInfo{SQL: c.sql, Params: c.params, Formats: c.formats, ParamOIDs: c.oids})
		fmt.Fprintf(&out, "%s\n  %s\n", c.name, oneLine(c.sql))
		if err != nil {
			pe := pgerr.From(err)
			fmt.Fprintf(&out, "  => ERROR %s: %s\n", pe.Code, pe.Message)
			if c.code == "" {
				t.Errorf("%s: unexpected error %v", c.name, err)
				continue
			}
			if pe.Code != c.code {
				t.Errorf("%s: SQLSTATE %s (%v), want %s", c.name, pe.Code, err, c.code)
			}
			all := pe.Message + "\n" + pe.Detail + "\n" + pe.Hint
			for _, m := range c.msg {
				if !strings.Contains(all, m) {
					t.Errorf("%s: error %q lacks %q", c.name, all, m)
				}
			}
			continue
		}
		fmt.Fprintf(&out, "  => %s\n", d.Explain())
		if c.code != "" {
			t.Errorf("%s: routed to %s, want error %s", c.name, d.Explain(), c.code)
			continue
		}
		if d.Kind != c.kind || !slices.Equal(d.Shards, c.shards) || d.Reason != c.reason {
			t.Errorf("%s: got %s %v (%s), want %s %v (%s)", c.name, d.Kind, d.Shards, d.Reason, c.kind, c.shards, c.reason)
		}
		if got := attrs(d); got != c.attrs {
			t.Errorf("%s: attributes %q, want %q", c.name, got, c.attrs)
		}
	}
	return out.String()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func TestRouteFindsKeys(t *testing.T) {
	r := testRouter(t)
	bin := []int16{1}
	cases := []routeCase{
		// Literals.
		{name: "literal uuid", sql: "SELECT * FROM incidents WHERE team_id = '" + teamA + "'",
			kind: OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
		{name: "literal uuid in another spelling", sql: "SELECT * FROM incidents WHERE team_id = '{00000005000040008000000000000005}'",
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "literal with cast", sql: "SELECT * FROM incidents WHERE team_id = '" + strings.ToUpper(teamC) + "'::uuid",
			kind: OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "literal on the left", sql: "SELECT * FROM incidents WHERE '" + teamB + "' = team_id",
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "override wins over hash", sql: "SELECT * FROM incidents WHERE team_id = '" + teamO + "'",
			kind: OneShard, shards: one("shard-c"), reason: ReasonOverride, attrs: "ro replica"},

		// Bind parameters.
		{name: "text param with SQLAlchemy cast", sql: "SELECT incidents.* FROM incidents WHERE incidents.team_id = $1::UUID ORDER BY incidents.created_at DESC LIMIT $2::INTEGER",
			params: [][]byte{txt(teamB), txt("50")},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "binary params with cast", sql: "SELECT incidents.* FROM incidents WHERE incidents.team_id = $1::UUID ORDER BY incidents.created_at DESC LIMIT $2::INTEGER",
			params: [][]byte{uuidBin(t, teamC), int4Bin(50)}, formats: []int16{1, 1},
			kind: OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "binary uuid param without cast (pgx)", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{uuidBin(t, teamA)}, formats: bin, oids: []uint32{2950},
			kind: OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
		{name: "text-typed param cast to uuid", sql: "SELECT * FROM incidents WHERE team_id = $1::uuid",
			params: [][]byte{txt(strings.ToUpper(teamB))}, oids: []uint32{25},
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "param among several, per-param formats", sql: "SELECT * FROM incidents WHERE status = $1 AND team_id = $2 AND priority = $3",
			params: [][]byte{txt("OPEN"), uuidBin(t, teamC), txt("HIGH")}, formats: []int16{0, 1, 0},
			kind: OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "alias-qualified column", sql: "SELECT i.id FROM incidents AS i WHERE i.team_id = $1",
			params: [][]byte{txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "schema-qualified table and column", sql: "SELECT * FROM public.incidents WHERE public.incidents.team_id = $1",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
		{name: "NULL param matches no row", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{nil},
			kind:   AnyShard, shards: allShards, reason: ReasonNoTable, attrs: "ro replica"},

		// IN and ANY.
		{name: "IN list on two shards", sql: "SELECT * FROM incidents WHERE team_id IN ('" + teamA + "', '" + teamB + "')",
			kind: SomeShards, shards: []string{"shard-a", "shard-b"}, reason: ReasonKey, attrs: "ro replica"},
		{name: "IN list of params on one shard", sql: "SELECT * FROM incidents WHERE team_id IN ($1, $2)",
			params: [][]byte{txt(teamC), txt(teamO)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonOverride, attrs: "ro replica"},
		{name: "ANY of a text array param", sql: "SELECT * FROM incidents WHERE team_id = ANY($1)",
			params: [][]byte{txt("{" + teamA + ",\"" + teamB + "\",NULL}")},
			kind:   SomeShards, shards: []string{"shard-a", "shard-b"}, reason: ReasonKey, attrs: "ro replica"},
		{name: "ANY of a binary uuid[] param", sql: "SELECT * FROM incidents WHERE team_id = ANY($1::uuid[])",
			params: [][]byte{arrayBin(oidUUID, uuidBin(t, teamA), uuidBin(t, teamB), uuidBin(t, teamC))}, formats: bin,
			kind: AllShards, shards: allShards, reason: ReasonKey, attrs: "ro replica"},
		{name: "ANY of a literal array", sql: "SELECT * FROM incidents WHERE team_id = ANY('{" + teamB + "}')",
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "ANY of a cast literal array", sql: "SELECT * FROM incidents WHERE team_id = ANY('{" + teamA + "," + teamC + "}'::uuid[])",
			kind: SomeShards, shards: []string{"shard-a", "shard-c"}, reason: ReasonKey, attrs: "ro replica"},
		{name: "ANY of ARRAY[...] of params", sql: "SELECT * FROM incidents WHERE team_id = ANY(ARRAY[$1, $2]::uuid[])",
			params: [][]byte{txt(teamB), txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "OR of keys", sql: "SELECT * FROM incidents WHERE team_id = $1 OR team_id = $2",
			params: [][]byte{txt(teamA), txt(teamC)},
			kind:   SomeShards, shards: []string{"shard-a", "shard-c"}, reason: ReasonKey, attrs: "ro replica"},
		{name: "AND of a key and an OR", sql: "SELECT * FROM incidents WHERE team_id = $1 AND (status = 'OPEN' OR priority = 'HIGH')",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},

		// Joins.
		{name: "join carries the key through ON equality", sql: "SELECT * FROM incidents i JOIN agent_configs a ON a.team_id = i.team_id WHERE i.team_id = $1",
			params: [][]byte{txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "join USING and an unqualified key", sql: "SELECT * FROM incidents JOIN agent_configs USING (team_id) WHERE team_id = $1",
			params: [][]byte{txt(teamC)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "teams.id joins incidents.team_id", sql: "SELECT t.name, count(*) FROM teams t JOIN incidents i ON i.team_id = t.id WHERE t.id = $1 GROUP BY t.name",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
		{name: "left join: the nullable side follows", sql: "SELECT * FROM teams t LEFT JOIN incidents i ON i.team_id = t.id WHERE t.id = $1",
			params: [][]byte{txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "join with replicated users", sql: "SELECT i.*, u.email FROM incidents i JOIN users u ON u.id = i.created_by WHERE i.team_id = $1",
			params: [][]byte{txt(teamC)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "join on a non-key column leaves a table keyless", sql: "SELECT * FROM incidents i JOIN agent_configs a ON a.id = i.id WHERE i.team_id = $1",
			params: [][]byte{txt(teamA)},
			code:   pgerr.ServerRejected, msg: []string{`"agent_configs"`}},

		// Subqueries and CTEs.
		{name: "IN subquery on a replicated table", sql: "SELECT * FROM incidents WHERE team_id = $1 AND assigned_to IN (SELECT id FROM users WHERE email = $2)",
			params: [][]byte{txt(teamB), txt("a@b.c")},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "subquery with its own key", sql: "SELECT * FROM teams WHERE id = (SELECT team_id FROM incidents WHERE team_id = $1 LIMIT 1)",
			params: [][]byte{txt(teamA)},
			code:   pgerr.ServerRejected, msg: []string{`"teams"`}},
		{name: "correlated subquery follows the outer key", sql: "SELECT * FROM incidents i WHERE i.team_id = $1 AND EXISTS (SELECT 1 FROM agent_configs a WHERE a.team_id = i.team_id AND a.name = 'x')",
			params: [][]byte{txt(teamC)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "derived table", sql: "SELECT count(*) FROM (SELECT id FROM incidents WHERE team_id = $1) AS anon_1",
			params: [][]byte{txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "CTE", sql: "WITH x AS (SELECT * FROM incidents WHERE team_id = $1) SELECT * FROM x JOIN users u ON u.id = x.created_by",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
		{name: "CTE name shadows a table", sql: "WITH incidents AS (SELECT 1 AS a) SELECT * FROM incidents",
			kind: AnyShard, shards: allShards, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "data-modifying CTE is a write", sql: "WITH d AS (DELETE FROM incidents WHERE team_id = $1 RETURNING id) SELECT count(*) FROM d",
			params: [][]byte{txt(teamC)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey},
		{name: "UNION of two keys", sql: "SELECT id FROM incidents WHERE team_id = '" + teamA + "' UNION ALL SELECT id FROM agent_configs WHERE team_id = '" + teamB + "'",
			kind: SomeShards, shards: []string{"shard-a", "shard-b"}, reason: ReasonKey, attrs: "ro replica"},
		{name: "SELECT FOR UPDATE is a write", sql: "SELECT * FROM incidents WHERE team_id = $1 FOR UPDATE",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey},
		{name: "nextval is a write", sql: "SELECT nextval('s'), * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey},
		{name: "EXPLAIN routes its statement", sql: "EXPLAIN SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "several statements in one Query", sql: "BEGIN; UPDATE incidents SET title = 'x' WHERE team_id = '" + teamC + "'; COMMIT",
			kind: OneShard, shards: one("shard-c"), reason: ReasonKey},

		// Writes.
		{name: "INSERT with params", sql: "INSERT INTO incidents (id, team_id, title) VALUES ($1, $2, $3)",
			params: [][]byte{txt("6f1c8a52-1d7e-4f4e-9d55-2f0a1c3b4d5e"), uuidBin(t, teamB), txt("t")}, formats: []int16{0, 1, 0},
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey},
		{name: "multi-row INSERT with literals on two shards", sql: "INSERT INTO incidents (team_id, title) VALUES ('" + teamA + "', 'a'), ('" + teamC + "', 'c')",
			kind: SomeShards, shards: []string{"shard-a", "shard-c"}, reason: ReasonKey},
		{name: "multi-row INSERT with params on one shard", sql: "INSERT INTO incidents (team_id, title) VALUES ($1, $2), ($3, $4)",
			params: [][]byte{txt(teamA), txt("a"), txt(teamA), txt("b")},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey},
		{name: "INSERT without a column list", sql: "INSERT INTO incidents VALUES ($1, $2)",
			params: [][]byte{txt("x"), txt(teamA)},
			code:   pgerr.ServerRejected, msg: []string{"INSERT", `"incidents"`, "team_id", "column list"}},
		{name: "INSERT ... SELECT", sql: "INSERT INTO incidents (team_id, title) SELECT team_id, title FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamA)},
			code:   pgerr.ServerRejected, msg: []string{"INSERT"}},
		{name: "INSERT of a NULL key goes to null_shard", sql: "INSERT INTO stats (org_id, team_id) VALUES ($1, NULL)",
			params: [][]byte{txt("x")},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey},
		{name: "INSERT of a NULL param key goes to null_shard", sql: "INSERT INTO stats (org_id, team_id) VALUES ($1, $2)",
			params: [][]byte{txt("x"), nil},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey},
		{name: "keyless INSERT under policy all is refused", sql: "INSERT INTO stats (org_id) VALUES ($1)",
			params: [][]byte{txt("x")},
			code:   pgerr.ServerRejected, msg: []string{"INSERT", `"stats"`, "every shard"}},
		{name: "UPDATE by key", sql: "UPDATE incidents SET title = $1 WHERE team_id = $2 AND id = $3",
			params: [][]byte{txt("t"), txt(teamB), txt("6f1c8a52-1d7e-4f4e-9d55-2f0a1c3b4d5e")},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey},
		{name: "UPDATE moving a row to another team spans both shards", sql: "UPDATE incidents SET team_id = $1 WHERE team_id = $2",
			params: [][]byte{txt(teamA), txt(teamB)},
			kind:   SomeShards, shards: []string{"shard-a", "shard-b"}, reason: ReasonKey},
		{name: "UPSERT keeps the key", sql: "INSERT INTO incidents (id, team_id, title) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, team_id = EXCLUDED.team_id",
			params: [][]byte{txt("x"), txt(teamC), txt("t")},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey},
		{name: "UPSERT moving the row to another team", sql: "INSERT INTO incidents (id, team_id) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET team_id = $3",
			params: [][]byte{txt("x"), txt(teamC), txt(teamA)},
			kind:   SomeShards, shards: []string{"shard-a", "shard-c"}, reason: ReasonKey},
		{name: "UPDATE with an alias", sql: "UPDATE incidents AS i SET version = i.version + 1 WHERE i.team_id = $1",
			params: [][]byte{txt(teamC)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey},
		{name: "DELETE by key", sql: "DELETE FROM agent_configs WHERE team_id = $1 AND id = $2",
			params: [][]byte{txt(teamA), txt("x")},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey},
		{name: "DELETE USING", sql: "DELETE FROM incidents i USING teams t WHERE i.team_id = t.id AND t.id = $1",
			params: [][]byte{txt(teamB)},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey},
		{name: "teams by id", sql: "SELECT teams.id, teams.name FROM teams WHERE teams.id = $1::UUID LIMIT $2::INTEGER",
			params: [][]byte{txt(teamA), txt("1")},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
	}
	golden(t, "route_keys.golden", runRouteCases(t, r, cases))
}

func TestRouteWithoutKeys(t *testing.T) {
	r := testRouter(t)
	cases := []routeCase{
		{name: "keyless under reject names the table and the ways to add a key", sql: "SELECT * FROM incidents WHERE id = $1",
			params: [][]byte{txt("x")},
			code:   pgerr.ServerRejected, msg: []string{`"incidents"`, "incidents.team_id", "SET brownie.team_id", "/* brownie:team_id="}},
		{name: "key under OR with a non-key condition is no key", sql: "SELECT * FROM incidents WHERE team_id = $1 OR title = 'x'",
			params: [][]byte{txt(teamA)},
			code:   pgerr.ServerRejected},
		{name: "key under NOT is no key", sql: "SELECT * FROM incidents WHERE NOT (team_id = $1)",
			params: [][]byte{txt(teamA)},
			code:   pgerr.ServerRejected},
		{name: "UPDATE by id only", sql: "UPDATE incidents SET title = $1 WHERE id = $2",
			params: [][]byte{txt("t"), txt("x")},
			code:   pgerr.ServerRejected, msg: []string{`"incidents"`}},
		{name: "keyless under all fans out", sql: "SELECT * FROM stats WHERE org_id = $1",
			params: [][]byte{txt("x")},
			kind:   AllShards, shards: allShards, reason: ReasonKeylessPolicy, attrs: "ro replica"},
		{name: "keyless under default goes to the default shard", sql: "SELECT * FROM configs WHERE name = $1",
			params: [][]byte{txt("x")},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKeylessPolicy, attrs: "ro replica"},
		{name: "IS NULL goes to null_shard", sql: "SELECT * FROM stats WHERE team_id IS NULL AND org_id = $1",
			params: [][]byte{txt("x")},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonKey, attrs: "ro replica"},
		{name: "IS NULL without a null_shard is no key", sql: "SELECT * FROM incidents WHERE team_id IS NULL",
			code: pgerr.ServerRejected},
		{name: "INSERT of a NULL key without a null_shard is no key", sql: "INSERT INTO incidents (team_id, title) VALUES (NULL, 'x')",
			code: pgerr.ServerRejected, msg: []string{"INSERT"}},
		{name: "= NULL matches nothing", sql: "SELECT * FROM stats WHERE team_id = NULL",
			kind: AnyShard, shards: allShards, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "ANY with NULL elements", sql: "SELECT * FROM stats WHERE team_id = ANY($1)",
			params: [][]byte{txt("{NULL," + teamB + "}")},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "UPDATE setting the key to NULL", sql: "UPDATE stats SET team_id = NULL WHERE team_id = $1",
			params: [][]byte{txt(teamA)},
			kind:   SomeShards, shards: []string{"shard-a", "shard-c"}, reason: ReasonKey},
		{name: "key or NULL", sql: "SELECT * FROM stats WHERE team_id = $1 OR team_id IS NULL",
			params: [][]byte{txt(teamA)},
			kind:   SomeShards, shards: []string{"shard-a", "shard-c"}, reason: ReasonKey, attrs: "ro replica"},
		{name: "only replicated tables: any shard, in-use first", sql: "SELECT * FROM users WHERE id = $1",
			params: [][]byte{txt("x")}, facts: SessionFacts{ShardsInUse: []string{"shard-b"}},
			kind: AnyShard, shards: []string{"shard-b", "shard-a", "shard-c"}, reason: ReasonReplicated, attrs: "ro replica"},
		{name: "no table: any shard", sql: "SELECT 1",
			kind: AnyShard, shards: allShards, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "no table with a team hint prefers its shard", sql: "SELECT now()", facts: SessionFacts{TeamHint: teamC},
			kind: AnyShard, shards: []string{"shard-c", "shard-a", "shard-b"}, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "catalog tables are anywhere", sql: "SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typname = 'hstore'",
			kind: AnyShard, shards: allShards, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "information_schema", sql: "SELECT * FROM information_schema.tables",
			kind: AnyShard, shards: allShards, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "SET and SHOW go anywhere", sql: "SET timezone = 'UTC'",
			kind: AnyShard, shards: allShards, reason: ReasonNoTable},
		{name: "BEGIN goes where the transaction is", sql: "BEGIN", facts: SessionFacts{ShardsInUse: []string{"shard-c"}},
			kind: AnyShard, shards: []string{"shard-c", "shard-a", "shard-b"}, reason: ReasonNoTable},
		{name: "unlisted table is refused", sql: "SELECT * FROM invoices",
			code: pgerr.ServerRejected, msg: []string{`"invoices"`, "shard map"}},
		{name: "replicated write goes everywhere", sql: "UPDATE users SET team_id = $1 WHERE id = $2",
			params: [][]byte{txt(teamA), txt("x")},
			kind:   AllShards, shards: allShards, reason: ReasonReplicated, attrs: "broadcast"},
		{name: "schema change goes everywhere", sql: "CREATE INDEX ix_incidents_title ON incidents (title)",
			kind: AllShards, shards: allShards, reason: ReasonSchemaChange, attrs: "broadcast"},
		{name: "COPY FROM into a sharded table splits its rows by key", sql: "COPY incidents (team_id, title) FROM STDIN",
			kind: AllShards, shards: allShards, reason: ReasonKey},
		{name: "COPY of a keyed query", sql: "COPY (SELECT * FROM incidents WHERE team_id = '" + teamB + "') TO STDOUT",
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "a join of sharded tables on other columns than their keys across shards is refused",
			sql:  "SELECT * FROM stats s1 JOIN stats s2 ON s1.metric_name = s2.metric_name",
			code: pgerr.FeatureNotSupported, msg: []string{"stats", "other than their keys"}},
		{name: "a join of sharded tables on their keys spans shards", sql: "SELECT * FROM stats s1 JOIN stats s2 USING (team_id)",
			kind: AllShards, shards: allShards, reason: ReasonKeylessPolicy, attrs: "ro replica"},
		{name: "a join on other columns of one team's rows runs on its shard",
			sql:  "SELECT * FROM stats s1 JOIN stats s2 ON s1.metric_name = s2.metric_name WHERE s1.team_id = '" + teamB + "' AND s2.team_id = '" + teamB + "'",
			kind: OneShard, shards: one("shard-b"), reason: ReasonKey, attrs: "ro replica"},
		{name: "an array too large to read is no key", sql: "SELECT * FROM stats WHERE team_id = ANY($1)",
			params: [][]byte{txt("{" + strings.Repeat(teamA+",", maxArrayElems) + teamB + "}")},
			kind:   AllShards, shards: allShards, reason: ReasonKeylessPolicy, attrs: "ro replica"},
		{name: "unparsable text goes anywhere; the server reports it", sql: "SELEC * FORM incidents",
			kind: AnyShard, shards: allShards, reason: ReasonUnparsed},
		{name: "replicas only outside transactions", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamA)}, facts: SessionFacts{InTransaction: true},
			kind: OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro"},
		{name: "or in read-only transactions", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamA)}, facts: SessionFacts{InTransaction: true, ReadOnlyTransaction: true},
			kind: OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
	}
	golden(t, "route_keyless.golden", runRouteCases(t, r, cases))
}

func TestRouteHonoursHints(t *testing.T) {
	r := testRouter(t)
	cases := []routeCase{
		{name: "comment team hint for a keyless statement", sql: "/* brownie:team_id=" + teamB + " */ SELECT * FROM incidents WHERE id = $1",
			params: [][]byte{txt("x")},
			kind:   OneShard, shards: one("shard-b"), reason: ReasonHint, attrs: "ro replica"},
		{name: "comment among other comment text", sql: "/* app=api, brownie:team_id='" + teamC + "' route=/x */\n  -- more\nUPDATE incidents SET title = $1 WHERE id = $2",
			params: [][]byte{txt("t"), txt("x")},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonHint},
		{name: "line comment hint", sql: "-- brownie:team_id=" + teamA + "\nDELETE FROM incidents WHERE id = $1",
			params: [][]byte{txt("x")},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonHint},
		{name: "a hint not in a leading comment is ignored", sql: "SELECT * FROM incidents /* brownie:team_id=" + teamB + " */ WHERE id = $1",
			params: [][]byte{txt("x")},
			code:   pgerr.ServerRejected},
		{name: "comment team hint agrees with the key", sql: "/* brownie:team_id=" + teamA + " */ SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{uuidBin(t, teamA)}, formats: []int16{1},
			kind: OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro replica"},
		{name: "tenant guard: comment hint disagrees with the key", sql: "/* brownie:team_id=" + teamA + " */ SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamB)},
			code:   CodeInsufficientPrivilege, msg: []string{teamB, teamA, "brownie:team_id comment"}},
		{name: "tenant guard: session hint disagrees with the key", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamB)}, facts: SessionFacts{TeamHint: teamA},
			code: CodeInsufficientPrivilege, msg: []string{"session's brownie.team_id"}},
		{name: "tenant guard: a key under OR still counts", sql: "SELECT * FROM incidents WHERE team_id = $1 OR title = 'x'",
			params: [][]byte{txt(teamB)}, facts: SessionFacts{TeamHint: teamA},
			code: CodeInsufficientPrivilege},
		{name: "tenant guard: an INSERT for another team", sql: "INSERT INTO incidents (team_id) VALUES ($1)",
			params: [][]byte{txt(teamC)}, facts: SessionFacts{TeamHint: teamA},
			code: CodeInsufficientPrivilege},
		{name: "session team hint for keyless statements", sql: "UPDATE incidents SET title = $1 WHERE id = $2",
			params: [][]byte{txt("t"), txt("x")}, facts: SessionFacts{TeamHint: strings.ToUpper(teamC)},
			kind: OneShard, shards: one("shard-c"), reason: ReasonHint},
		{name: "session team hint uses overrides", sql: "SELECT * FROM agent_configs WHERE id = $1",
			params: [][]byte{txt("x")}, facts: SessionFacts{TeamHint: teamO},
			kind: OneShard, shards: one("shard-c"), reason: ReasonHint, attrs: "ro replica"},
		{name: "comment team hint beats the session's", sql: "/* brownie:team_id=" + teamB + " */ SELECT * FROM incidents WHERE id = 1",
			facts: SessionFacts{TeamHint: teamA},
			kind:  OneShard, shards: one("shard-b"), reason: ReasonHint, attrs: "ro replica"},
		{name: "comment shard hint beats keys", sql: "/* brownie:shard=shard-c */ SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-c"), reason: ReasonHint, attrs: "ro replica"},
		{name: "session shard hint", sql: "SELECT * FROM incidents WHERE id = 1", facts: SessionFacts{ShardHint: "shard-b"},
			kind: OneShard, shards: one("shard-b"), reason: ReasonHint, attrs: "ro replica"},
		{name: "unknown shard in a comment", sql: "/* brownie:shard=shard-z */ SELECT 1",
			code: pgerr.UndefinedObject, msg: []string{"shard-z", "shard-a, shard-b, shard-c"}},
		{name: "unknown shard in the session", sql: "SELECT 1", facts: SessionFacts{ShardHint: "nope"},
			code: pgerr.UndefinedObject, msg: []string{`"nope"`}},
		{name: "role=primary keeps a read off replicas", sql: "/* brownie:role=primary */ SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt(teamA)},
			kind:   OneShard, shards: one("shard-a"), reason: ReasonKey, attrs: "ro primary"},
		{name: "unknown comment hint", sql: "/* brownie:team=x */ SELECT 1",
			code: pgerr.InvalidParameterValue, msg: []string{"brownie:team=x"}},
		{name: "bad role", sql: "/* brownie:role=leader */ SELECT 1",
			code: pgerr.InvalidParameterValue},
		{name: "malformed team hint", sql: "/* brownie:team_id=not-a-uuid */ SELECT 1",
			code: CodeInvalidTextRepresentation, msg: []string{"not-a-uuid", "brownie:team_id comment"}},
		{name: "SET brownie.team_id in the same Query scopes what follows", sql: "SET LOCAL brownie.team_id = '" + teamB + "'; SELECT * FROM incidents WHERE id = 1",
			kind: OneShard, shards: one("shard-b"), reason: ReasonHint},
		{name: "SET brownie.shard to an unknown shard", sql: "SET brownie.shard = 'shard-9'",
			code: pgerr.UndefinedObject, msg: []string{"shard-9"}},
		{name: "SET of an unknown brownie setting", sql: "SET brownie.teamid = 'x'",
			code: pgerr.UndefinedObject, msg: []string{"brownie.teamid"}},
		{name: "SET brownie.team_id with a malformed key", sql: "SET brownie.team_id = 'oops'",
			code: CodeInvalidTextRepresentation},
	}
	golden(t, "route_hints.golden", runRouteCases(t, r, cases))
}

func TestRouteReportsMalformedKeys(t *testing.T) {
	r := testRouter(t)
	cases := []routeCase{
		{name: "malformed literal", sql: "SELECT * FROM incidents WHERE team_id = 'abc'",
			code: CodeInvalidTextRepresentation, msg: []string{`"abc"`, "incidents"}},
		{name: "malformed text param", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{txt("0000-zz")},
			code:   CodeInvalidTextRepresentation, msg: []string{"$1"}},
		{name: "binary uuid of 15 bytes", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{make([]byte, 15)}, formats: []int16{1},
			code: CodeInvalidTextRepresentation, msg: []string{"16"}},
		{name: "integer for a uuid key", sql: "SELECT * FROM incidents WHERE team_id = $1",
			params: [][]byte{int8Bin(5)}, formats: []int16{1}, oids: []uint32{20},
			code: CodeInvalidTextRepresentation},
		{name: "malformed array param", sql: "SELECT * FROM incidents WHERE team_id = ANY($1)",
			params: [][]byte{txt("{" + teamA)},
			code:   CodeInvalidTextRepresentation},
		{name: "truncated binary array", sql: "SELECT * FROM incidents WHERE team_id = ANY($1)",
			params: [][]byte{arrayBin(oidUUID, uuidBin(t, teamA))[:30]}, formats: []int16{1},
			code: CodeInvalidTextRepresentation},
	}
	golden(t, "route_malformed.golden", runRouteCases(t, r, cases))
}

// TestBrownieAPIQueriesRoute routes the statements the Brownie API sends
// (reference §7.4-7.5: SQLAlchemy 2 + psycopg 3, casts on every parameter)
// with the shipped shard map.
func TestBrownieAPIQueriesRoute(t *testing.T) {
	r := brownieRouter(t)
	team := "2f9a7c1e-5b3d-4e8f-a1c2-3d4e5f6a7b8c"
	k, _ := r.ParseKey(team)
	home := r.Place(k)
	both := []string{"shard-0", "shard-1"}
	insert := `INSERT INTO incidents (id, org_id, created_by, updated_by, version, idempotency_key, title, description, status, priority, assigned_to, started_at, resolved_at, closed_at, tags, incident_metadata, response_time_minutes, resolution_time_minutes, team_id, organization_id) VALUES ($1::UUID, $2::UUID, $3::UUID, $4::UUID, $5::INTEGER, $6::VARCHAR, $7::VARCHAR, $8::VARCHAR, $9, $10, $11::UUID, $12::TIMESTAMP WITHOUT TIME ZONE, $13::TIMESTAMP WITHOUT TIME ZONE, $14::TIMESTAMP WITHOUT TIME ZONE, $15::JSON, $16::JSON, $17::INTEGER, $18::INTEGER, $19::UUID, $20::UUID) RETURNING incidents.created_at, incidents.updated_at`
	insertParams := make([][]byte, 20)
	for i := range insertParams {
		insertParams[i] = txt("x")
	}
	insertParams[18] = txt(team)
	cases := []routeCase{
		{name: "pool pre-ping", sql: "SELECT 1",
			kind: AnyShard, shards: both, reason: ReasonNoTable, attrs: "ro replica"},
		{name: "get_current_user", sql: "SELECT users.id, users.email, users.team_id FROM users WHERE users.id = $1::UUID AND users.is_active = true AND users.deleted_at IS NULL LIMIT $2::INTEGER",
			params: [][]byte{txt(team), txt("1")},
			kind:   AnyShard, shards: both, reason: ReasonReplicated, attrs: "ro replica"},
		{name: "list incidents of a team", sql: "SELECT incidents.* FROM incidents WHERE incidents.team_id = $1::UUID ORDER BY incidents.created_at DESC LIMIT $2::INTEGER",
			params: [][]byte{txt(team), txt("50")},
			kind:   OneShard, shards: one(home), reason: ReasonKey, attrs: "ro replica"},
		{name: "list incidents with filters and cursor", sql: "SELECT incidents.id, incidents.title FROM incidents WHERE incidents.team_id = $1::UUID AND incidents.status = $2 AND (incidents.title ILIKE $3::VARCHAR OR incidents.description ILIKE $4::VARCHAR) AND incidents.id > $5::UUID ORDER BY incidents.created_at DESC LIMIT $6::INTEGER",
			params: [][]byte{txt(team), txt("OPEN"), txt("%a%"), txt("%a%"), txt(team), txt("50")},
			kind:   OneShard, shards: one(home), reason: ReasonKey, attrs: "ro replica"},
		{name: "team by id", sql: "SELECT teams.id, teams.name, teams.org_id FROM teams WHERE teams.id = $1::UUID",
			params: [][]byte{txt(team)},
			kind:   OneShard, shards: one(home), reason: ReasonKey, attrs: "ro replica"},
		{name: "agent config name check", sql: "SELECT agent_configs.id FROM agent_configs WHERE agent_configs.team_id = $1::UUID AND agent_configs.name = $2::VARCHAR AND agent_configs.id != $3::UUID LIMIT $4::INTEGER",
			params: [][]byte{txt(team), txt("n"), txt(team), txt("1")},
			kind:   OneShard, shards: one(home), reason: ReasonKey, attrs: "ro replica"},
		{name: "team stats", sql: "SELECT stats.* FROM stats WHERE stats.team_id = $1::UUID AND stats.timestamp >= $2::TIMESTAMP WITH TIME ZONE ORDER BY stats.timestamp DESC LIMIT $3::INTEGER",
			params: [][]byte{txt(team), txt("2025-01-01"), txt("10")},
			kind:   OneShard, shards: one(home), reason: ReasonKey, attrs: "ro replica"},
		{name: "organization stats fan out", sql: "SELECT stats.* FROM stats WHERE stats.org_id = $1::UUID ORDER BY stats.timestamp DESC LIMIT $2::INTEGER",
			params: [][]byte{txt(team), txt("10")},
			kind:   AllShards, shards: both, reason: ReasonKeylessPolicy, attrs: "ro replica"},
		{name: "incident by id fans out", sql: "SELECT incidents.* FROM incidents WHERE incidents.id = $1::UUID",
			params: [][]byte{txt(team)},
			kind:   AllShards, shards: both, reason: ReasonKeylessPolicy, attrs: "ro replica"},
		{name: "update incident by id fans out", sql: "UPDATE incidents SET title=$1::VARCHAR, updated_at=now() WHERE incidents.id = $2::UUID",
			params: [][]byte{txt("t"), txt(team)},
			kind:   AllShards, shards: both, reason: ReasonKeylessPolicy},
		{name: "ORM insert of an incident", sql: insert, params: insertParams,
			kind: OneShard, shards: one(home), reason: ReasonKey},
		{name: "signup inserts an organization everywhere", sql: "INSERT INTO organizations (id, name, slug, is_active, max_teams, max_users_per_team) VALUES ($1::UUID, $2::VARCHAR, $3::VARCHAR, $4, $5::INTEGER, $6::INTEGER)",
			params: [][]byte{txt(team), txt("o"), txt("o"), txt("t"), txt("10"), txt("50")},
			kind:   AllShards, shards: both, reason: ReasonReplicated, attrs: "broadcast"},
		{name: "signup inserts its team on the team's shard", sql: "INSERT INTO teams (id, org_id, name, slug, is_active, organization_id) VALUES ($1::UUID, $2::UUID, $3::VARCHAR, $4::VARCHAR, $5, $6::UUID)",
			params: [][]byte{txt(team), txt(team), txt("t"), txt("t"), txt("t"), txt(team)},
			kind:   OneShard, shards: one(home), reason: ReasonKey},
		{name: "admin count by team reads users", sql: "SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users WHERE users.team_id = $1::UUID AND users.role = $2 AND users.is_active = true AND users.deleted_at IS NULL) AS anon_1",
			params: [][]byte{txt(team), txt("ADMIN")},
			kind:   AnyShard, shards: both, reason: ReasonReplicated, attrs: "ro replica"},
		{name: "alembic version", sql: "SELECT version_num FROM alembic_version",
			kind: AnyShard, shards: both, reason: ReasonReplicated, attrs: "ro replica"},
	}
	golden(t, "route_brownie.golden", runRouteCases(t, r, cases))
}

func TestRouteWithBigintAndTextKeys(t *testing.T) {
	for _, kt := range []string{"bigint", "text"} {
		t.Run(kt, func(t *testing.T) {
			r := routerFromYAML(t, `
key_type: `+kt+`
shards:
  - {name: s0, primary: 127.0.0.1:5001}
  - {name: s1, primary: 127.0.0.1:5002}
  - {name: s2, primary: 127.0.0.1:5003}
tables:
  t: {sharded_by: k}
`)
			var key Key
			if kt == "bigint" {
				key = BigintKey(42)
			} else {
				key = TextKey("42")
			}
			want := r.Place(key)
			forms := []struct {
				name    string
				sql     string
				params  [][]byte
				formats []int16
				oids    []uint32
			}{
				{"literal", "SELECT * FROM t WHERE k = 42", nil, nil, nil},
				{"string literal", "SELECT * FROM t WHERE k = '42'", nil, nil, nil},
				{"text param", "SELECT * FROM t WHERE k = $1", [][]byte{txt(" 42 ")[1:3]}, nil, nil},
				{"binary int8", "SELECT * FROM t WHERE k = $1", [][]byte{int8Bin(42)}, []int16{1}, []uint32{20}},
				{"binary int4 (typed)", "SELECT * FROM t WHERE k = $1", [][]byte{int4Bin(42)}, []int16{1}, []uint32{23}},
				{"binary int2 via cast", "SELECT * FROM t WHERE k = $1::smallint", [][]byte{int2Bin(42)}, []int16{1}, nil},
				{"binary int8 array", "SELECT * FROM t WHERE k = ANY($1)", [][]byte{arrayBin(oidInt8, int8Bin(42))}, []int16{1}, []uint32{oidInt8Array}},
			}
			for _, f := range forms {
				if kt == "text" && (f.name == "literal" || strings.HasPrefix(f.name, "binary int")) {
					continue // integers are not text keys in PostgreSQL either
				}
				d, err := r.Route(SessionFacts{}, StmtInfo{SQL: f.sql, Params: f.params, Formats: f.formats, ParamOIDs: f.oids})
				if err != nil {
					t.Errorf("%s: %v", f.name, err)
					continue
				}
				if d.Kind != OneShard || d.Shards[0] != want {
					t.Errorf("%s: %s, want %s", f.name, d.Explain(), want)
				}
			}
			if kt == "text" {
				d, err := r.Route(SessionFacts{}, StmtInfo{SQL: "SELECT * FROM t WHERE k = $1", Params: [][]byte{txt("42")}, Formats: []int16{1}, ParamOIDs: []uint32{1043}})
				if err != nil || d.Shards[0] != want {
					t.Errorf("binary varchar: %v %v", d.Shards, err)
				}
			}
		})
	}
}

func TestOneShardMapRoutesEverythingThere(t *testing.T) {
	// What internal/app builds today: no tables, no key type.
	r, err := New(&Map{Shards: []Shard{{Name: "shard-0", Primary: Host{Addr: "localhost:5432"}}}})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := r.RouteSession(SessionFacts{})
	if err != nil || tg.Shard != "shard-0" || tg.Role != Primary || tg.Host.Addr != "localhost:5432" {
		t.Fatalf("RouteSession = %v, %v", tg, err)
	}
	for _, sql := range []string{"SELECT * FROM incidents WHERE id = $1", "INSERT INTO anything (a) VALUES (1)", "SELECT 1", "CREATE TABLE x (a int)"} {
		d, err := r.Route(SessionFacts{}, StmtInfo{SQL: sql, Params: [][]byte{txt("1")}})
		if err != nil {
			t.Errorf("%s: %v", sql, err)
			continue
		}
		if d.Shards[0] != "shard-0" {
			t.Errorf("%s: %s", sql, d.Explain())
		}
	}
}

func TestRouteSessionFollowsHints(t *testing.T) {
	r := testRouter(t)
	for _, c := range []struct {
		facts SessionFacts
		want  string
	}{
		{SessionFacts{}, "shard-a"},
		{SessionFacts{TeamHint: teamB}, "shard-b"},
		{SessionFacts{TeamHint: teamO}, "shard-c"},
		{SessionFacts{ShardHint: "shard-c", TeamHint: teamA}, "shard-c"},
	} {
		tg, err := r.RouteSession(c.facts)
		if err != nil || tg.Shard != c.want {
			t.Errorf("%+v: %v %v, want %s", c.facts, tg, err, c.want)
		}
	}
	if _, err := r.RouteSession(SessionFacts{TeamHint: "x"}); pgCode(err) != CodeInvalidTextRepresentation {
		t.Errorf("malformed team hint: %v", err)
	}
}

func TestSetHintsAreReturnedForTheProxy(t *testing.T) {
	r := testRouter(t)
	d, err := r.Route(SessionFacts{}, StmtInfo{SQL: "SELECT set_config('brownie.team_id', $1, true)", Params: [][]byte{txt(teamB)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Hint{{Name: HintTeam, Value: teamB, Local: true}}; !slices.Equal(d.SetHints, want) {
		t.Errorf("SetHints = %+v, want %+v", d.SetHints, want)
	}
	hints, err := r.SessionHints("SET brownie.shard TO 'shard-b'; RESET brownie.team_id; SET LOCAL brownie.role = 'primary'; RESET ALL; SET timezone = 'UTC'")
	if err != nil {
		t.Fatal(err)
	}
	want := []Hint{
		{Name: HintShard, Value: "shard-b"},
		{Name: HintTeam, Reset: true},
		{Name: HintRole, Value: "primary", Local: true},
		{Name: HintAll, Reset: true},
	}
	if !slices.Equal(hints, want) {
		t.Errorf("SessionHints = %+v\nwant %+v", hints, want)
	}
	if _, err := r.SessionHints("SET brownie.team_id = 'zz'"); pgCode(err) != CodeInvalidTextRepresentation {
		t.Errorf("malformed: %v", err)
	}
	if h, err := r.SessionHints("DISCARD ALL"); err != nil || len(h) != 1 || h[0].Name != HintAll {
		t.Errorf("DISCARD ALL: %+v %v", h, err)
	}
	if h, err := r.SessionHints("SELECT 1"); err != nil || h != nil {
		t.Errorf("SELECT 1: %+v %v", h, err)
	}
}

func TestPlanIsCachedWithoutItsLeadingComment(t *testing.T) {
	r := testRouter(t)
	p1, err := r.Plan("/* brownie:team_id=" + teamA + " */ SELECT * FROM incidents WHERE team_id = $1")
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := r.Plan("/* brownie:team_id=" + teamB + " */ SELECT * FROM incidents WHERE team_id = $1")
	p3, _ := r.Plan("SELECT * FROM incidents WHERE team_id = $1")
	if p1 != p2 || p2 != p3 {
		t.Error("the same statement with different hint comments was compiled more than once")
	}
	if n := r.cur.Load().cache.len(); n != 1 {
		t.Errorf("cache holds %d plans, want 1", n)
	}
	if _, err := r.Plan("SELEC 1"); pgCode(err) != CodeSyntaxError {
		t.Errorf("syntax error: %v", err)
	}
	// A swapped map starts a new cache: plans follow the map.
	if err := r.Swap(r.Map()); err != nil {
		t.Fatal(err)
	}
	if p4, _ := r.Plan("SELECT * FROM incidents WHERE team_id = $1"); p4 == p3 {
		t.Error("plan survived a map swap")
	}
}

func TestPlanCacheIsBounded(t *testing.T) {
	c := newPlanCache(3)
	for i := range 10 {
		c.put(fmt.Sprint(i), &StmtPlan{})
	}
	if c.len() != 3 || c.get("9") == nil || c.get("0") != nil {
		t.Errorf("len %d", c.len())
	}
}

func TestKeysListsPlacementKeys(t *testing.T) {
	r := testRouter(t)
	p, err := r.Plan("SELECT * FROM incidents i JOIN agent_configs a USING (team_id) WHERE team_id = ANY($1) AND i.title = $2")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := p.Keys([][]byte{txt("{" + teamA + "," + strings.ToUpper(teamA) + "," + teamB + "}"), txt("x")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range keys {
		got = append(got, k.String())
	}
	if !slices.Equal(got, []string{teamA, teamB}) {
		t.Errorf("Keys = %v", got)
	}
	if !p.ReadOnly() || !slices.Equal(p.Tables(), []string{"incidents", "agent_configs"}) {
		t.Errorf("ReadOnly %v Tables %v", p.ReadOnly(), p.Tables())
	}
	// Without parameters nothing is known.
	if keys, err := p.Keys(nil, nil, nil); err != nil || len(keys) != 0 {
		t.Errorf("no params: %v %v", keys, err)
	}
}

func TestSwapRefusesABadMapAndKeepsTheOld(t *testing.T) {
	r := testRouter(t)
	old := r.Map()
	bad := *old
	bad.Shards = nil
	if err := r.Swap(&bad); err == nil {
		t.Fatal("Swap accepted a map without shards")
	}
	if r.Map() != old {
		t.Fatal("a refused map replaced the old one")
	}
}

func TestRouterIsSafeForConcurrentUse(t *testing.T) {
	r := testRouter(t)
	m := r.Map()
	done := make(chan struct{})
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 300 {
				sql := fmt.Sprintf("SELECT * FROM incidents WHERE team_id = $1 AND id = %d", i%50)
				d, err := r.Route(SessionFacts{}, StmtInfo{SQL: sql, Params: [][]byte{txt(teamB)}})
				if err != nil || d.Shards[0] != "shard-b" {
					errs <- fmt.Errorf("goroutine %d: %v %v", g, d.Shards, err)
					return
				}
				if g == 0 && i%20 == 0 {
					if err := r.Swap(m); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLargeKeyArraysRouteInLinearTime(t *testing.T) {
	r := testRouter(t)
	elems := make([][]byte, maxArrayElems)
	for i := range elems {
		var u [16]byte
		u[0], u[1], u[2], u[15] = byte(i>>16), byte(i>>8), byte(i), 1
		elems[i] = u[:]
	}
	st := StmtInfo{SQL: "SELECT * FROM incidents WHERE team_id = ANY($1)", Params: [][]byte{arrayBin(oidUUID, elems...)}, Formats: []int16{1}}
	start := time.Now()
	d, err := r.Route(SessionFacts{}, st)
	if err != nil || d.Kind != AllShards {
		t.Fatalf("%s %v", d.Explain(), err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("routing %d keys took %v", len(elems), el)
	}
	if !strings.Contains(d.Explain(), fmt.Sprintf("and %d more keys", maxArrayElems-maxWhyKeys)) {
		t.Errorf("Explain lists every key: %.300s", d.Explain())
	}
}

func TestTxFreeMarksSelectsThatNeitherDependOnNorActOnTheirTransaction(t *testing.T) {
	r := testRouter(t)
	for sql, want := range map[string]bool{
		"SELECT id, email FROM users WHERE id = $1":                          true,
		"SELECT count(*), max(created_at) FROM users WHERE org_id = $1":      true,
		"SELECT lower(email), pg_catalog.upper(username) FROM users LIMIT 1": true,
		"SELECT 1; SELECT 2":       true,
		"SELECT now()":             false,
		"SELECT CURRENT_TIMESTAMP": false,
		"SELECT id FROM users WHERE created_at > now() - interval '1 day'":         false,
		"SELECT pg_advisory_xact_lock(1)":                                          false,
		"SELECT set_config('statement_timeout', '1s', true)":                       false,
		"SELECT nextval('users_seq')":                                              false,
		"SELECT app.lower(email) FROM users":                                       false,
		"SELECT my_function(id) FROM users":                                        false,
		"SELECT id FROM users WHERE id = $1 FOR UPDATE":                            false,
		"SELECT id INTO users_copy FROM users":                                     false,
		"SHOW statement_timeout":                                                   false,
		"SET LOCAL statement_timeout = '1s'":                                       false,
		"UPDATE users SET email = 'x' WHERE id = $1":                               false,
		"WITH u AS (DELETE FROM users WHERE id = $1 RETURNING id) SELECT * FROM u": false,
	} {
		d, err := r.Route(SessionFacts{}, StmtInfo{SQL: sql, Params: [][]byte{txt("00000000-0000-0000-0000-000000000001")}})
		if err != nil {
			t.Errorf("%s: %v", sql, err)
			continue
		}
		if d.TxFree != want {
			t.Errorf("%s: TxFree %v, want %v", sql, d.TxFree, want)
		}
	}
}
