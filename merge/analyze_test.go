package merge

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// TestAnalyzePlansTheShardStatement pins the shard statement and merge
// kinds for the constructs the merge handles.
func TestAnalyzePlansTheShardStatement(t *testing.T) {
	tests := []struct {
		name, sql, shard string
		kinds            []string
	}{
		{"order by a hidden column with a limit",
			"SELECT id, title FROM incidents ORDER BY created_at DESC LIMIT 20",
			"SELECT id, title, created_at AS _merge_h1 FROM incidents ORDER BY created_at DESC LIMIT 20",
			[]string{"order", "limit"}},
		{"star with parameters: keys hidden, limit plus offset, hint comment dropped",
			"/* brownie:shard=all */ SELECT * FROM incidents ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
			"SELECT *, created_at AS _merge_h1, id AS _merge_h2 FROM incidents ORDER BY created_at DESC, id LIMIT $1::bigint + $2::bigint",
			[]string{"order", "limit"}},
		{"positions and names of output columns need no hidden column",
			"SELECT a, b FROM t ORDER BY 2 DESC, a NULLS FIRST",
			"SELECT a, b FROM t ORDER BY 2 DESC, a NULLS FIRST",
			[]string{"order"}},
		{"output alias", "SELECT a AS x FROM t ORDER BY x", "SELECT a AS x FROM t ORDER BY x", []string{"order"}},
		{"expression", "SELECT a FROM t ORDER BY lower(b)",
			"SELECT a, lower(b) AS _merge_h1 FROM t ORDER BY lower(b)", []string{"order"}},
		{"an expression equal to an output column", "SELECT lower(b) FROM t ORDER BY lower(b)",
			"SELECT lower(b) FROM t ORDER BY lower(b)", []string{"order"}},
		{"constant limit and offset fold", "SELECT a FROM t ORDER BY a LIMIT 10 OFFSET 5",
			"SELECT a FROM t ORDER BY a LIMIT 15", []string{"order", "limit"}},
		{"a sum past 32 bits", "SELECT a FROM t ORDER BY a LIMIT 3000000000 OFFSET 2",
			"SELECT a FROM t ORDER BY a LIMIT 3000000002", []string{"order", "limit"}},
		{"a sum past 64 bits leaves the shards unlimited", "SELECT a FROM t ORDER BY a LIMIT 9223372036854775807 OFFSET 2",
			"SELECT a FROM t ORDER BY a", []string{"order", "limit"}},
		{"offset alone is the merge's", "SELECT a FROM t ORDER BY a OFFSET 5",
			"SELECT a FROM t ORDER BY a", []string{"order", "limit"}},
		{"offset parameter stays referenced", "SELECT a FROM t ORDER BY a OFFSET $1",
			"SELECT a FROM t ORDER BY a OFFSET NULLIF($1::bigint, $1::bigint)", []string{"order", "limit"}},
		{"cast parameter keeps its type", "SELECT a FROM t ORDER BY a LIMIT $1::integer OFFSET 3",
			"SELECT a FROM t ORDER BY a LIMIT $1::int::bigint + 3::bigint", []string{"order", "limit"}},
		{"limit without order", "SELECT a FROM t LIMIT 5", "SELECT a FROM t LIMIT 5", []string{"limit"}},
		{"fetch first with ties", "SELECT a FROM t ORDER BY a OFFSET 2 ROWS FETCH FIRST 3 ROWS WITH TIES",
			"SELECT a FROM t ORDER BY a FETCH FIRST 5 ROWS WITH TIES", []string{"order", "limit"}},
		{"fetch first with ties and parameters", "SELECT a FROM t ORDER BY a OFFSET $2 ROWS FETCH FIRST $1 ROWS WITH TIES",
			"SELECT a FROM t ORDER BY a FETCH FIRST ($1::bigint + $2::bigint) ROWS WITH TIES", []string{"order", "limit"}},
		{"scalar aggregate", "SELECT count(*) FROM incidents", "SELECT count(*) FROM incidents", []string{"aggregate"}},
		{"groups: avg split, limit kept off the shards",
			"SELECT status, count(*), avg(version) FROM incidents GROUP BY status ORDER BY count(*) DESC LIMIT 3",
			"SELECT status, count(*), sum(version) AS avg, count(version) AS _merge_h1 FROM incidents GROUP BY status ORDER BY count(*) DESC",
			[]string{"order", "limit", "aggregate", "group"}},
		{"limit parameter of groups stays referenced",
			"SELECT a, count(*) FROM t GROUP BY a ORDER BY a LIMIT $1",
			"SELECT a, count(*) FROM t GROUP BY a ORDER BY a LIMIT NULLIF($1::bigint, $1::bigint)",
			[]string{"order", "limit", "aggregate", "group"}},
		{"grouping column not selected", "SELECT count(*) FROM incidents GROUP BY team_id",
			"SELECT count(*), team_id AS _merge_h1 FROM incidents GROUP BY team_id", []string{"aggregate", "group"}},
		{"group by output alias", "SELECT date_trunc('day', created_at) AS day, count(*) FROM incidents GROUP BY day",
			"SELECT date_trunc('day', created_at) AS day, count(*) FROM incidents GROUP BY day", []string{"aggregate", "group"}},
		{"group by position", "SELECT lower(t), count(*) FROM x GROUP BY 1",
			"SELECT lower(t), count(*) FROM x GROUP BY 1", []string{"aggregate", "group"}},
		{"ordered by an aggregate not selected", "SELECT a FROM t GROUP BY a ORDER BY avg(x) DESC",
			"SELECT a, sum(x) AS _merge_h1, count(x) AS _merge_h2 FROM t GROUP BY a ORDER BY avg(x) DESC",
			[]string{"order", "aggregate", "group"}},
		{"named avg", "SELECT avg(x) AS m FROM t", "SELECT sum(x) AS m, count(x) AS _merge_h1 FROM t", []string{"aggregate"}},
		{"avg with a filter", "SELECT avg(x) FILTER (WHERE x > 0) FROM t",
			"SELECT sum(x) FILTER (WHERE x > 0) AS avg, count(x) FILTER (WHERE x > 0) AS _merge_h1 FROM t", []string{"aggregate"}},
		{"every supported aggregate",
			"SELECT min(a), max(a), bool_and(b), bool_or(b), every(b), sum(x) FILTER (WHERE x > 0), count(x) FROM t",
			"SELECT min(a), max(a), bool_and(b), bool_or(b), every(b), sum(x) FILTER (WHERE x > 0), count(x) FROM t",
			[]string{"aggregate"}},
		{"distinct with limit pushed down", "SELECT DISTINCT status FROM incidents ORDER BY status LIMIT 2",
			"SELECT DISTINCT status FROM incidents ORDER BY status LIMIT 2", []string{"order", "limit", "distinct"}},
		{"distinct over groups is the merge's", "SELECT DISTINCT count(*) FROM t GROUP BY a",
			"SELECT count(*), a AS _merge_h1 FROM t GROUP BY a", []string{"aggregate", "group", "distinct"}},
		{"distinct on", "SELECT DISTINCT ON (team_id) team_id, title FROM incidents ORDER BY team_id, created_at DESC",
			"SELECT DISTINCT ON (team_id) team_id, title, created_at AS _merge_h1 FROM incidents ORDER BY team_id, created_at DESC",
			[]string{"order", "distinct"}},
		{"distinct on without order by sorts the shards", "SELECT DISTINCT ON (a) b FROM t",
			"SELECT DISTINCT ON (a) b, a AS _merge_h1 FROM t ORDER BY a", []string{"order", "distinct"}},
		{"union", "SELECT a FROM t UNION SELECT a FROM u ORDER BY a",
			"SELECT a FROM t UNION SELECT a FROM u ORDER BY a", []string{"order", "distinct"}},
		{"union all with a limit", "SELECT a FROM t UNION ALL SELECT a FROM u LIMIT 3",
			"SELECT a FROM t UNION ALL SELECT a FROM u LIMIT 3", []string{"limit"}},
		{"CTE runs per shard", "WITH x AS (SELECT * FROM t WHERE team_id = 1) SELECT a FROM x ORDER BY a",
			"WITH x AS (SELECT * FROM t WHERE team_id = 1) SELECT a FROM x ORDER BY a", []string{"order"}},
		{"for update without limit", "SELECT a FROM t ORDER BY a FOR UPDATE",
			"SELECT a FROM t ORDER BY a FOR UPDATE", []string{"order"}},
		{"collation C", `SELECT a FROM t ORDER BY a COLLATE "C"`,
			`SELECT a, a COLLATE "C" AS _merge_h1 FROM t ORDER BY a COLLATE "C"`, []string{"order"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Analyze(tc.sql)
			if err != nil || p == nil {
				t.Fatalf("Analyze(%s) = %v, %v", tc.sql, p, err)
			}
			if got := p.ShardSQL(); got != tc.shard {
				t.Errorf("ShardSQL:\n got %s\nwant %s", got, tc.shard)
			}
			if got := p.Kinds(); !slices.Equal(got, tc.kinds) {
				t.Errorf("Kinds = %v, want %v", got, tc.kinds)
			}
		})
	}
}

// TestAnalyzeLeavesConcatenationAlone lists statements whose shard rows
// are simply concatenated, or that every shard rejects by itself.
func TestAnalyzeLeavesConcatenationAlone(t *testing.T) {
	for _, sql := range []string{
		"SELECT a FROM t WHERE team_id = $1",
		"SELECT a FROM t LIMIT ALL",
		"SELECT a FROM t OFFSET 0",
		"SELECT a FROM t LIMIT NULL OFFSET NULL",
		"SELECT a FROM t WHERE b IN (SELECT b FROM u ORDER BY b LIMIT 1)",
		"SELECT * FROM (SELECT a FROM t ORDER BY a LIMIT 3) s",
		"SELECT a FROM t UNION ALL SELECT b FROM u",
		"SELECT a FROM t FOR UPDATE",
		"INSERT INTO t VALUES (1) RETURNING *",
		"WITH d AS (DELETE FROM t RETURNING a) INSERT INTO u SELECT a FROM d",
		"UPDATE t SET a = 1 RETURNING a",
		"SELECT 1",
		"SELECT a INTO u FROM t ORDER BY a",
		"EXPLAIN SELECT a FROM t ORDER BY a",
		"SET brownie.team_id = 'x'",
		"SELECT a FROM t ORDER BY 5",           // 42P10 on every shard
		"SELECT a FROM t LIMIT -1",             // 2201W on every shard
		"SELECT a FROM t ORDER BY a OFFSET -3", // 2201X on every shard
		"SELEC a",                              // 42601 on every shard
		"SELECT a FROM t; SELECT b FROM u",
		"VALUES (1), (2)",
		"",
	} {
		p, err := Analyze(sql)
		if p != nil || err != nil {
			t.Errorf("Analyze(%q) = %v, %v; want nil, nil", sql, p, err)
		}
	}
}

// TestAnalyzeRefusesWhatCannotBeMerged checks the 0A000 errors and that
// they name the construct.
func TestAnalyzeRefusesWhatCannotBeMerged(t *testing.T) {
	tests := []struct{ sql, msg string }{
		{"SELECT id, row_number() OVER (ORDER BY id) FROM t", "window function row_number() across shards is not supported"},
		{"SELECT a FROM t WINDOW w AS (ORDER BY a)", "window functions across shards are not supported"},
		{"SELECT a FROM t ORDER BY rank() OVER (ORDER BY a)", "window function rank() across shards"},
		{"SELECT a FROM t INTERSECT SELECT a FROM u", "INTERSECT across shards is not supported"},
		{"SELECT a FROM t EXCEPT SELECT a FROM u", "EXCEPT across shards is not supported"},
		{"SELECT a FROM t UNION ALL (SELECT a FROM u UNION SELECT a FROM v)", "UNION under UNION ALL across shards"},
		{"SELECT count(*) FROM t UNION ALL SELECT count(*) FROM u", "aggregates inside a UNION across shards"},
		{"SELECT a FROM t UNION ALL (SELECT a FROM u LIMIT 1)", "LIMIT or OFFSET inside a UNION across shards"},
		{"SELECT DISTINCT a FROM t UNION ALL SELECT a FROM u", "DISTINCT inside a UNION ALL across shards"},
		{"SELECT a FROM t UNION SELECT a FROM u ORDER BY lower(a)", "ORDER BY with an expression over a UNION across shards"},
		{"SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1", "HAVING over groups spanning shards is not supported"},
		{"SELECT count(DISTINCT a) FROM t", "count(DISTINCT ...) across shards is not supported"},
		{"SELECT array_agg(a) FROM t", "aggregate array_agg() across shards is not supported"},
		{"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a) FROM t", "aggregate percentile_cont() across shards"},
		{"SELECT myagg(a ORDER BY b) FROM t", "aggregate myagg() across shards"},
		{"SELECT sum(a) + 1 FROM t", "aggregate inside an expression (sum(a) + 1) across shards is not supported"},
		{"SELECT coalesce(sum(a), 0) FROM t", "aggregate inside an expression (COALESCE(sum(a), 0)) across shards"},
		{"SELECT a FROM t GROUP BY a ORDER BY max(b) - min(b)", "aggregate inside an expression (max(b) - min(b))"},
		{"SELECT a, count(*) FROM t GROUP BY ROLLUP (a)", "GROUPING SETS, ROLLUP and CUBE across shards are not supported"},
		{"SELECT a, count(*) FROM t GROUP BY GROUPING SETS ((a), ())", "GROUPING SETS, ROLLUP and CUBE"},
		{"SELECT *, count(*) FROM t GROUP BY id", "SELECT * with aggregates or GROUP BY across shards"},
		{"SELECT a FROM t ORDER BY a LIMIT (SELECT 1)", "LIMIT (SELECT 1) across shards is not supported"},
		{"SELECT a FROM t ORDER BY a LIMIT 2 + 3", "LIMIT 2 + 3 across shards is not supported"},
		{"SELECT a FROM t ORDER BY a OFFSET $1 + 1", "OFFSET $1 + 1 across shards is not supported"},
		{"SELECT a FROM t ORDER BY a LIMIT 3 FOR UPDATE", "FOR UPDATE or FOR SHARE with LIMIT or OFFSET across shards"},
		{`SELECT a FROM t ORDER BY a COLLATE "de_DE"`, `ORDER BY with collation "de_DE" across shards is not supported`},
		{`SELECT a COLLATE "de_DE" FROM t ORDER BY 1`, `ORDER BY with collation "de_DE"`},
		{`SELECT max(a COLLATE "de_DE") FROM t`, `max() with collation "de_DE" across shards is not supported`},
		{"SELECT a FROM t ORDER BY a USING <", "ORDER BY ... USING across shards is not supported"},
		{"SELECT a % 2 AS a, count(*) FROM t GROUP BY a", "GROUP BY a, which is both an output column and a column it is computed from"},
		{"SELECT DISTINCT ON (t.a) a FROM t ORDER BY a, b", "DISTINCT ON whose expressions differ from the leading ORDER BY"},
		{"VALUES (1), (2) ORDER BY 1", "VALUES with ORDER BY, LIMIT or OFFSET across shards"},
		{"SELECT a FROM t ORDER BY a; SELECT 1", "a query string of several statements whose rows must be merged"},
	}
	for _, tc := range tests {
		t.Run(tc.sql, func(t *testing.T) {
			p, err := Analyze(tc.sql)
			var pe *pgerr.Error
			if !errors.As(err, &pe) || p != nil {
				t.Fatalf("Analyze = %v, %v; want a *pgerr.Error", p, err)
			}
			if pe.Code != pgerr.FeatureNotSupported || pe.Severity != pgerr.SevError {
				t.Errorf("code %s severity %s, want 0A000 ERROR", pe.Code, pe.Severity)
			}
			if !strings.Contains(pe.Message, tc.msg) {
				t.Errorf("message %q does not contain %q", pe.Message, tc.msg)
			}
			// Lower-case like Go errors; SQL keywords keep their case.
			first, _, _ := strings.Cut(pe.Message, " ")
			if first != strings.ToLower(first) && first != strings.ToUpper(first) || strings.HasSuffix(pe.Message, ".") {
				t.Errorf("message %q must not be capitalized nor end with a period", pe.Message)
			}
			if !strings.Contains(pe.Message, "across shards") && !strings.Contains(pe.Message, "spanning shards") {
				t.Errorf("message %q does not say across shards", pe.Message)
			}
			if pe.Hint == "" {
				t.Errorf("no hint")
			}
		})
	}
}

// TestPlanColumns checks how positions in the shard's result are found
// around stars.
func TestPlanColumns(t *testing.T) {
	p, err := Analyze("SELECT x AS a, t.*, y AS b, u.*, z AS c FROM t, u ORDER BY a, c, b, 3")
	if err != nil {
		t.Fatal(err)
	}
	// b lies between two stars: it is ordered through a hidden copy.
	if want := "SELECT x AS a, t.*, y AS b, u.*, z AS c, y AS _merge_h1 FROM t, u ORDER BY a, c, b, 3"; p.ShardSQL() != want {
		t.Fatalf("ShardSQL = %s, want %s", p.ShardSQL(), want)
	}
	// With 3 columns in t and 2 in u, the shard returns a, t1..t3, b,
	// u1, u2, c, hidden: 10 columns, the client sees 9.
	c, err := p.clientColumns(10)
	if err != nil || c != 9 {
		t.Fatalf("clientColumns(10) = %d, %v", c, err)
	}
	var got []int
	for _, k := range p.order {
		got = append(got, p.column(k.col, c))
	}
	if want := []int{0, 8, 9, 2}; !slices.Equal(got, want) {
		t.Errorf("sort columns %v, want %v", got, want)
	}
	if _, err := p.clientColumns(3); err == nil {
		t.Errorf("clientColumns(3) accepted fewer columns than the plan's targets")
	}
}
