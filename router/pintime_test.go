package router

import (
	"strings"
	"testing"

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
