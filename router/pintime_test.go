package router

import (
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

func TestPinTimeMakesWritesToReplicatedTablesTheSameOnEveryShard(t *testing.T) {
	tables := map[string][]Column{
		"users": {{Name: "id"}, {Name: "created_at", Default: "now()"}, {Name: "updated_at", Default: "now()"},
			{Name: "email"}, {Name: "is_active", Default: "true"}},
		"public.orgs": {{Name: "id", Default: "gen_random_uuid()"}, {Name: "name"}},
		"seq":         {{Name: "id", Default: "nextval('seq_id_seq'::regclass)"}, {Name: "name"}},
	}
	cols := func(table string) ([]Column, bool) { c, ok := tables[table]; return c, ok }
	const now = "current_setting('brownie.now')::timestamp with time zone"
	for _, c := range []struct {
		in, want string // want "" means unchanged
		code     pgerr.Code
	}{
		{in: "INSERT INTO users (id, email) VALUES ($1::UUID, $2::VARCHAR) RETURNING users.created_at, users.updated_at",
			want: "INSERT INTO users (id, email, created_at, updated_at) VALUES ($1::uuid, $2::varchar, " + now + ", " + now + ") RETURNING users.created_at, users.updated_at"},
		{in: "INSERT INTO users (id, created_at, email) VALUES ($1, DEFAULT, 'a'), ($2, '2020-01-01', 'b')",
			want: "INSERT INTO users (id, created_at, email, updated_at) VALUES ($1, " + now + ", 'a', " + now + "), ($2, '2020-01-01', 'b', " + now + ")"},
		{in: "INSERT INTO users VALUES ($1, now(), now(), 'e')", want: "INSERT INTO users (id, created_at, updated_at, email) VALUES ($1, " + now + ", " + now + ", 'e')"},
		{in: "UPDATE users SET updated_at = now(), email = $1 WHERE users.id = $2::UUID",
			want: "UPDATE users SET updated_at = " + now + ", email = $1 WHERE users.id = $2::uuid"},
		{in: "UPDATE users SET updated_at = DEFAULT WHERE id = 1", want: "UPDATE users SET updated_at = " + now + " WHERE id = 1"},
		{in: "UPDATE users SET deleted = CURRENT_DATE WHERE id = 1", want: "UPDATE users SET deleted = " + now + "::pg_catalog.date WHERE id = 1"},
		{in: "UPDATE users SET email = 'x' WHERE id = 1"},
		{in: "DELETE FROM users WHERE id = $1"},
		{in: "CREATE TABLE t (at timestamptz DEFAULT now())"},
		{in: "INSERT INTO public.orgs (id, name) VALUES ($1, 'n')"},
		{in: "INSERT INTO public.orgs (name) VALUES ('n')", code: pgerr.FeatureNotSupported},
		{in: "INSERT INTO seq (name) VALUES ('n')", code: pgerr.FeatureNotSupported},
		{in: "INSERT INTO unknown (name) VALUES ('n')"},
		{in: "INSERT INTO users (id, email) VALUES ($0, 'a')"}, // no Bind supplies $0: the server says so
	} {
		out, changed, err := PinTime(c.in, cols)
		switch {
		case c.code != "":
			if pgerr.From(err).Code != c.code {
				t.Errorf("%s: %v, want %s", c.in, err, c.code)
			}
		case err != nil:
			t.Errorf("%s: %v", c.in, err)
		case c.want == "" && (changed || out != c.in):
			t.Errorf("%s: rewritten to %s, want it unchanged", c.in, out)
		case c.want != "" && (!changed || !strings.EqualFold(out, c.want)):
			t.Errorf("%s:\n got %s\nwant %s", c.in, out, c.want)
		}
	}
}

// FuzzPinTime feeds random statements to PinTime: no panic; a refusal is a
// client error, never XX000 (a statement Postgres would run must not fail
// in the sidecar); a rewritten text parses, has as many statements, and
// needs no second rewrite.
func FuzzPinTime(f *testing.F) {
	tables := map[string][]Column{
		"users": {{Name: "id"}, {Name: "created_at", Default: "now()"}, {Name: "email"}},
		"seq":   {{Name: "id", Default: "nextval('seq_id_seq'::regclass)"}, {Name: "name"}},
	}
	cols := func(table string) ([]Column, bool) { c, ok := tables[table]; return c, ok }
	for _, s := range []string{
		"INSERT INTO users (id, email) VALUES ($1, $2) RETURNING created_at",
		"UPDATE users SET created_at = DEFAULT, email = lower($1) WHERE id = $2",
		"INSERT INTO users SELECT $1, now(), 'e' WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = $1) ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at",
		"WITH x AS (UPDATE users SET created_at = CURRENT_TIMESTAMP RETURNING id) SELECT * FROM x",
		"MERGE INTO users u USING (SELECT 1 AS id) s ON u.id = s.id WHEN MATCHED THEN UPDATE SET created_at = clock_timestamp()",
		"SELECT now() - interval '1 day', LOCALTIME(3); DELETE FROM users WHERE created_at < now()",
		"INSERT INTO seq (name) VALUES ('n')",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		out, changed, err := PinTime(sql, cols)
		if err != nil {
			pe, ok := err.(*pgerr.Error)
			if !ok || pe.Code == pgerr.InternalError {
				t.Fatalf("PinTime(%q): %T %v", sql, err, err)
			}
			return
		}
		if !changed {
			if out != sql {
				t.Fatalf("PinTime(%q) changed the text but says it did not: %q", sql, out)
			}
			return
		}
		before, _ := pg.Parse(sql)
		after, perr := pg.Parse(out)
		if perr != nil || len(after.GetStmts()) != len(before.GetStmts()) {
			t.Fatalf("PinTime(%q) = %q: %v", sql, out, perr)
		}
		if again, changedAgain, err := PinTime(out, cols); err != nil || changedAgain {
			t.Fatalf("PinTime(%q) = %q, which it rewrites again: %q, %v", sql, out, again, err)
		}
	})
}
