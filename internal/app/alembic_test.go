package app

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

// dropBrownieSchema empties brownie_metadata of the Brownie schema that
// pgtest creates, so that Alembic builds it; the sidecar's own schema
// (brownie_sidecar) stays. The role keeps the right to create in schema
// public, as deploy/sql/01_schema.sql grants it.
const dropBrownieSchema = `
DROP TABLE IF EXISTS configs, stats, agent_configs, incidents, users, teams, organizations, alembic_version;
DROP TYPE IF EXISTS userrole, incidentstatus, incidentpriority, agenttype, configtype, configstatus;
GRANT USAGE, CREATE ON SCHEMA public TO "brownie-fastapi-server";
`

// schemaDumps returns pg_dump --schema-only of brownie_metadata on every
// shard primary, without the random \restrict lines of recent pg_dumps.
func (b *brownieShards) schemaDumps(t *testing.T) []string {
	t.Helper()
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	var dumps []string
	for i, sh := range b.srv.Shards {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), "--schema-only",
			"-h", sh.Primary.SocketDir(), "-p", strconv.Itoa(sh.Primary.Port()), "-U", "postgres", "brownie_metadata")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if err != nil {
			t.Fatalf("pg_dump of shard-%d: %v\n%s", i, err, stderr.String())
		}
		var kept []string
		for _, l := range strings.Split(stdout.String(), "\n") {
			if !strings.HasPrefix(l, `\restrict `) && !strings.HasPrefix(l, `\unrestrict `) {
				kept = append(kept, l)
			}
		}
		dumps = append(dumps, strings.Join(kept, "\n"))
	}
	return dumps
}

// TestAlembicMigratesEveryShardThroughTheSidecar runs Alembic
// (testdata/alembic: transactional DDL, the whole upgrade and its
// alembic_version row in one transaction) through the sidecar on two
// shards: upgrade, downgrade to base and upgrade again leave both shards
// with the same schema and version, and an upgrade whose last statement
// fails leaves both exactly as they were.
func TestAlembicMigratesEveryShardThroughTheSidecar(t *testing.T) {
	requirePython(t, "alembic", "sqlalchemy", "psycopg2")
	b := startBrownieShards(t, false, dropBrownieSchema)
	dsn := b.sc.dsn("")

	alembic := func(args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "/usr/bin/python3", append([]string{"-m", "alembic", "-c", "testdata/alembic/alembic.ini"}, args...)...)
		cmd.Env = append(os.Environ(), "BROWNIE_ALEMBIC_DSN="+dsn, "PYTHONDONTWRITEBYTECODE=1")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// tail keeps Alembic's progress lines and the final exception: the
	// failing statement and its error.
	tail := func(out string) string {
		var keep []string
		final := false
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			final = final || strings.HasPrefix(l, "sqlalchemy.exc.")
			if (strings.HasPrefix(l, "INFO ") || final) && !strings.HasPrefix(l, "(Background on this error") {
				keep = append(keep, "    "+clip(l, 400))
			}
		}
		if !final {
			return out
		}
		return strings.Join(keep, "\n")
	}
	// same checks that every shard has the same schema and returns it.
	same := func(step string) string {
		t.Helper()
		dumps := b.schemaDumps(t)
		for i := 1; i < len(dumps); i++ {
			if dumps[i] != dumps[0] {
				t.Errorf("after %s the schemas of shard-0 and shard-%d differ:\n%s", step, i,
					firstLineDifference("shard-0", dumps[0], "shard-"+strconv.Itoa(i), dumps[i]))
			}
		}
		return dumps[0]
	}
	versionIs := func(step, want string) {
		t.Helper()
		for i, sh := range b.srv.Shards {
			v, err := sh.Primary.Exec(context.Background(), "brownie_metadata", "SELECT to_regclass('public.alembic_version') IS NOT NULL")
			if err == nil && v == "t" {
				v, err = sh.Primary.Exec(context.Background(), "brownie_metadata", "SELECT coalesce(string_agg(version_num, ','), 'empty') FROM alembic_version")
			} else if err == nil {
				v = "no table"
			}
			if err != nil {
				t.Fatalf("shard-%d: alembic_version: %v", i, err)
			}
			if v != want {
				t.Errorf("after %s shard-%d's alembic_version is %q, want %q", step, i, v, want)
			}
		}
	}
	unchanged := func(step, before, after string) {
		t.Helper()
		if after != before {
			t.Errorf("%s changed the schema:\n%s", step, firstLineDifference("before", before, "after", after))
		}
	}

	empty := same("setup")
	versionIs("setup", "no table")

	out, err := alembic("upgrade", "0002")
	if err != nil {
		unchanged("the failed upgrade to 0002", empty, same("the failed upgrade to 0002"))
		b.nothingPrepared(t, "the failed upgrade")
		t.Fatalf("alembic upgrade 0002 through the sidecar: %v\n%s", err, tail(out))
	}
	at2 := same("upgrade 0002")
	for _, want := range []string{"CREATE TYPE public.incidentstatus", "CREATE TABLE public.incidents", "severity_score",
		"ix_incidents_severity_score", "CREATE TABLE public.users", "locale", "CREATE TABLE public.alembic_version"} {
		if !strings.Contains(at2, want) {
			t.Errorf("after upgrade 0002 the schema lacks %q", want)
		}
	}
	versionIs("upgrade 0002", "0002")
	b.nothingPrepared(t, "upgrade 0002")

	if out, err := alembic("downgrade", "base"); err != nil {
		t.Fatalf("alembic downgrade base through the sidecar: %v\n%s", err, tail(out))
	}
	base := same("downgrade base")
	for _, gone := range []string{"CREATE TYPE", "CREATE TABLE public.incidents", "CREATE TABLE public.users"} {
		if strings.Contains(base, gone) {
			t.Errorf("after downgrade base the schema still has %q", gone)
		}
	}
	versionIs("downgrade base", "empty")

	if out, err := alembic("upgrade", "0002"); err != nil {
		t.Fatalf("alembic upgrade 0002 after downgrade base: %v\n%s", err, tail(out))
	}
	unchanged("upgrading to 0002 again", at2, same("upgrade 0002 again"))
	versionIs("upgrade 0002 again", "0002")

	// 0003 fails at its last statement: nothing of it may stay, on either
	// shard.
	out, err = alembic("upgrade", "head")
	if err == nil {
		t.Errorf("alembic upgrade head (0003, broken on purpose) succeeded:\n%s", tail(out))
	} else if !strings.Contains(out, `relation "runbooks" does not exist`) {
		t.Errorf("alembic upgrade head failed for another reason than the missing table:\n%s", tail(out))
	}
	unchanged("the failed upgrade to 0003", at2, same("the failed upgrade to 0003"))
	versionIs("the failed upgrade to 0003", "0002")
	b.nothingPrepared(t, "the failed upgrade to 0003")
}
