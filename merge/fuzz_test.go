package merge

import (
	"errors"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// FuzzAnalyze feeds random statement texts to Analyze: no panic; a refusal
// is a client error (*pgerr.Error), never XX000; a plan's statement for the
// shards parses, and analysing the same text again gives the same plan.
func FuzzAnalyze(f *testing.F) {
	for _, s := range []string{
		"SELECT team_id, count(*) FROM incidents GROUP BY 1 ORDER BY 2 DESC LIMIT $1",
		"SELECT DISTINCT avg(i4 + 0.5) AS a1, count(n) FROM items GROUP BY v ORDER BY 1 DESC NULLS FIRST, 2 LIMIT $1 OFFSET $2",
		"SELECT DISTINCT ON (t) t, id FROM items ORDER BY t, id DESC",
		"SELECT * FROM items ORDER BY ts COLLATE \"C\" FETCH FIRST 3 ROWS WITH TIES",
		"SELECT min(d), max(f), bool_and(b), sum(iv) FROM items",
		"SELECT 1; SELECT count(*) FROM t",
		"SELECT count(*) FILTER (WHERE b) FROM items GROUP BY ROLLUP (t)",
		"SELECT x FROM t ORDER BY x USING < LIMIT 1",
		"SELECT count(*) FROM t WHERE a = $0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		p, err := Analyze(sql)
		if err != nil {
			var pe *pgerr.Error
			if !errors.As(err, &pe) || pe.Code == pgerr.InternalError {
				t.Fatalf("Analyze(%q): %v is not a client error", sql, err)
			}
			return
		}
		if p == nil {
			return
		}
		if _, err := pg.Parse(p.ShardSQL()); err != nil {
			t.Fatalf("Analyze(%q) sends the shards %q, which does not parse: %v", sql, p.ShardSQL(), err)
		}
		again, err := Analyze(sql)
		if err != nil || again == nil || again.ShardSQL() != p.ShardSQL() || again.String() != p.String() {
			t.Fatalf("Analyze(%q) is not deterministic: %v then %v, %v", sql, p, again, err)
		}
	})
}
