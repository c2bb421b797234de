package pgcluster_test

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
	bstls "github.com/brownie/brownie-sidecar/tls"
)

// fixture holds the certificates and a base directory the postgres OS user
// can traverse.
type fixture struct {
	base    string
	certDir string
	log     *bytes.Buffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if _, err := pgcluster.FindBinDir(); err != nil {
		t.Fatal(err)
	}
	// t.TempDir is 0700 under a 0700 parent, which the postgres OS user
	// cannot traverse when the test runs as root.
	base, err := os.MkdirTemp("", "pgcluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(base, "certs")
	if err := bstls.WriteDevCerts(certDir, pgcluster.BrownieRole); err != nil {
		t.Fatal(err)
	}
	return &fixture{base: base, certDir: certDir, log: new(bytes.Buffer)}
}

func (f *fixture) config(name string, primary *pgcluster.Cluster) pgcluster.Config {
	return pgcluster.Config{
		Dir:        filepath.Join(f.base, name),
		ServerCert: filepath.Join(f.certDir, "server.crt"),
		ServerKey:  filepath.Join(f.certDir, "server.key"),
		CACert:     filepath.Join(f.certDir, "ca.crt"),
		PrimaryOf:  primary,
		Log:        f.log,
	}
}

// start creates and starts a cluster and stops it when the test ends.
func (f *fixture) start(ctx context.Context, t *testing.T, cfg pgcluster.Config) *pgcluster.Cluster {
	t.Helper()
	c, err := pgcluster.Create(ctx, cfg)
	if err != nil {
		t.Fatalf("create %s: %v\n%s", cfg.Dir, err, f.log)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", cfg.Dir, err)
	}
	t.Cleanup(func() {
		if err := c.Stop(context.Background()); err != nil {
			t.Errorf("stop %s: %v", cfg.Dir, err)
		}
	})
	return c
}

func mustExec(ctx context.Context, t *testing.T, c *pgcluster.Cluster, db, sql string) string {
	t.Helper()
	out, err := c.Exec(ctx, db, sql)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// psqlTCP runs sql through /usr/bin/psql over TCP with conninfo, with no
// PG* variables and an empty HOME so that no default client certificate
// (~/.postgresql/postgresql.crt) is picked up.
func psqlTCP(ctx context.Context, t *testing.T, conninfo, sql string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "/usr/bin/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", &psqlError{err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return strings.TrimSpace(stdout.String()), nil
}

type psqlError struct {
	err    error
	stderr string
}

func (e *psqlError) Error() string { return e.err.Error() + ": " + e.stderr }

func TestPrimaryAndReplicaLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	outer := t // Clusters (re)started inside subtests must outlive them.

	primary := f.start(ctx, t, f.config("primary", nil))
	if primary.IsReplica() {
		t.Fatal("primary reports IsReplica")
	}

	t.Run("EnsureBrownieDatabaseCreatesTheSchemaIdempotently", func(t *testing.T) {
		for i := range 2 {
			if err := primary.EnsureBrownieDatabase(ctx); err != nil {
				t.Fatalf("run %d: %v", i+1, err)
			}
		}
		db := pgcluster.BrownieDatabase
		tables := mustExec(ctx, t, primary, db,
			`SELECT string_agg(tablename || ':' || tableowner, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'`)
		const wantTables = "agent_configs:brownie-fastapi-server,alembic_version:brownie-fastapi-server," +
			"configs:brownie-fastapi-server,incidents:brownie-fastapi-server,organizations:brownie-fastapi-server," +
			"stats:brownie-fastapi-server,teams:brownie-fastapi-server,users:brownie-fastapi-server"
		if tables != wantTables {
			t.Errorf("tables:owners = %s\nwant %s", tables, wantTables)
		}
		if v := mustExec(ctx, t, primary, db, `SELECT string_agg(version_num, ',') FROM alembic_version`); v != "d607e412e7b0" {
			t.Errorf("alembic_version = %q", v)
		}
		enums := mustExec(ctx, t, primary, db, `
			SELECT t.typname || '=' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
			FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
			GROUP BY t.typname ORDER BY t.typname`)
		const wantEnums = "agenttype=INCIDENT_RESPONSE,MONITORING,ANALYSIS,NOTIFICATION,CUSTOM\n" +
			"configstatus=DRAFT,ACTIVE,DEPRECATED,ARCHIVED\n" +
			"configtype=ORGANIZATION,TEAM,ALERT,AGENT,GLOBAL\n" +
			"incidentpriority=LOW,MEDIUM,HIGH,CRITICAL\n" +
			"incidentstatus=OPEN,IN_PROGRESS,RESOLVED,CLOSED,CANCELLED\n" +
			"userrole=ADMIN,MEMBER,VIEWER"
		if enums != wantEnums {
			t.Errorf("enums =\n%s\nwant\n%s", enums, wantEnums)
		}
		// Spot checks of the migration's shape: index count, FK actions,
		// and that only the timestamps have defaults.
		if n := mustExec(ctx, t, primary, db, `SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname LIKE 'ix\_%'`); n != "30" {
			t.Errorf("got %s ix_ indexes, want 30", n)
		}
		fks := mustExec(ctx, t, primary, db, `
			SELECT string_agg(conname || ':' || confdeltype::text, ',' ORDER BY conname)
			FROM pg_constraint WHERE contype = 'f' AND conrelid = 'incidents'::regclass`)
		if want := "incidents_assigned_to_fkey:n,incidents_created_by_fkey:n,incidents_organization_id_fkey:c,incidents_team_id_fkey:c"; fks != want {
			t.Errorf("incident FKs = %s, want %s", fks, want)
		}
		defaults := mustExec(ctx, t, primary, db, `
			SELECT string_agg(DISTINCT column_name, ',' ORDER BY column_name) FROM information_schema.columns
			WHERE table_schema = 'public' AND column_default IS NOT NULL`)
		if defaults != "created_at,updated_at" {
			t.Errorf("columns with defaults = %s", defaults)
		}
	})

	replica := f.start(ctx, t, f.config("replica", primary))
	if !replica.IsReplica() {
		t.Fatal("replica does not report IsReplica")
	}
	if got := mustExec(ctx, t, replica, "postgres", "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("replica pg_is_in_recovery = %s", got)
	}
	if replica.Port() == primary.Port() {
		t.Fatal("replica shares the primary's port")
	}

	t.Run("WritesOnThePrimaryReachTheReplica", func(t *testing.T) {
		mustExec(ctx, t, primary, pgcluster.BrownieDatabase, `
			INSERT INTO organizations (id, name, slug, is_active, max_teams, max_users_per_team)
			VALUES ('00000000-0000-0000-0000-000000000001', 'Acme', 'acme', true, 10, 50)`)
		if err := replica.WaitReplayed(ctx, primary); err != nil {
			t.Fatal(err)
		}
		if got := mustExec(ctx, t, replica, pgcluster.BrownieDatabase, `SELECT slug FROM organizations`); got != "acme" {
			t.Fatalf("replica sees %q", got)
		}
	})

	t.Run("TCPRequiresAClientCertificateWhoseCNIsTheRole", func(t *testing.T) {
		for _, c := range []*pgcluster.Cluster{primary, replica} {
			base := "host=localhost port=" + itoa(c.Port()) + " dbname=" + pgcluster.BrownieDatabase +
				" sslmode=verify-full sslrootcert=" + filepath.Join(f.certDir, "ca.crt") + " connect_timeout=10"
			withCert := " sslcert=" + filepath.Join(f.certDir, "client.crt") + " sslkey=" + filepath.Join(f.certDir, "client.key")

			if _, err := psqlTCP(ctx, t, base+" user="+pgcluster.BrownieRole, "SELECT 1"); err == nil {
				t.Errorf("port %d: connection without a client certificate succeeded", c.Port())
			} else if !strings.Contains(err.Error(), "certificate") {
				t.Errorf("port %d: unexpected refusal: %v", c.Port(), err)
			}
			if _, err := psqlTCP(ctx, t, base+withCert+" user=postgres", "SELECT 1"); err == nil {
				t.Errorf("port %d: certificate with CN %s logged in as postgres", c.Port(), pgcluster.BrownieRole)
			}
			got, err := psqlTCP(ctx, t, base+withCert+" user="+pgcluster.BrownieRole,
				"SELECT current_user || ',' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")
			if err != nil {
				t.Fatalf("port %d: connection with the client certificate: %v", c.Port(), err)
			}
			if got != pgcluster.BrownieRole+",true" {
				t.Errorf("port %d: got %q", c.Port(), got)
			}
		}
	})

	t.Run("StopIsIdempotentAndCreateReusesData", func(t *testing.T) {
		mustExec(ctx, t, primary, "postgres", "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
		if err := replica.WaitReplayed(ctx, primary); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := primary.Stop(ctx); err != nil {
				t.Fatalf("stop %d: %v", i+1, err)
			}
		}
		if _, err := primary.Exec(ctx, "postgres", "SELECT 1"); err == nil {
			t.Fatal("stopped primary still answers")
		}
		again, err := pgcluster.Create(ctx, f.config("primary", nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := again.Start(ctx); err != nil {
			t.Fatal(err)
		}
		primary = again
		outer.Cleanup(func() { again.Stop(context.Background()) })
		if got := mustExec(ctx, t, again, "postgres", "SELECT v FROM kept"); got != "still here" {
			t.Fatalf("after reuse got %q", got)
		}
		if got := mustExec(ctx, t, again, "postgres", "SHOW port"); got != itoa(again.Port()) {
			t.Fatalf("reused cluster listens on %s, want the new port %d", got, again.Port())
		}

		// The primary moved to a new port; recreating the replica points it
		// there, and it keeps its data and its standby role.
		if err := replica.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		mustExec(ctx, t, again, "postgres", "INSERT INTO kept VALUES ('while replica was down')")
		replica = f.start(ctx, outer, f.config("replica", again))
		if !replica.IsReplica() {
			t.Fatal("reused replica is no longer a replica")
		}
		if err := replica.WaitReplayed(ctx, again); err != nil {
			t.Fatal(err)
		}
		if got := mustExec(ctx, t, replica, "postgres", "SELECT count(*) FROM kept"); got != "2" {
			t.Fatalf("reused replica has %s rows, want 2", got)
		}
	})

	t.Run("CreateRefusesARunningCluster", func(t *testing.T) {
		if _, err := pgcluster.Create(ctx, f.config("replica", primary)); err == nil || !strings.Contains(err.Error(), "already running") {
			t.Fatalf("Create on a running cluster: %v", err)
		}
	})

	t.Run("KilledPrimaryIsReplacedByPromotingTheReplica", func(t *testing.T) {
		if err := primary.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := primary.Kill(); err != nil {
			t.Fatalf("second Kill: %v", err)
		}
		if err := replica.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		if replica.IsReplica() {
			t.Fatal("promoted cluster still reports IsReplica")
		}
		mustExec(ctx, t, replica, "postgres", "INSERT INTO kept VALUES ('after failover')")
		if got := mustExec(ctx, t, replica, "postgres", "SELECT count(*) FROM kept"); got != "3" {
			t.Fatalf("promoted replica has %s rows, want 3", got)
		}
	})
}

func TestCreateReportsEveryConfigProblem(t *testing.T) {
	_, err := pgcluster.Create(t.Context(), pgcluster.Config{Port: -1, ServerKey: "/nonexistent/server.key"})
	if err == nil {
		t.Fatal("Create accepted an empty config")
	}
	for _, want := range []string{"Dir is required", "Port -1", "ServerCert is required", "ServerKey", "CACert is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDeployHBAMatchesTheOneTestsUse(t *testing.T) {
	b, err := os.ReadFile("../../deploy/postgres/pg_hba.conf")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hbaRules(string(b)), hbaRules(pgcluster.HBA); got != want {
		t.Fatalf("deploy/postgres/pg_hba.conf rules:\n%s\nwant (pgcluster.HBA):\n%s", got, want)
	}
	if strings.Contains(pgcluster.HBA, "\nhost ") || strings.HasPrefix(pgcluster.HBA, "host ") {
		t.Fatal("HBA has a plain host line; TCP must require TLS client certificates")
	}
}

// hbaRules normalises pg_hba.conf text to its rules, one per line, with
// single spaces.
func hbaRules(text string) string {
	var rules []string
	for line := range strings.Lines(text) {
		line, _, _ = strings.Cut(line, "#")
		if fields := strings.Fields(line); len(fields) > 0 {
			rules = append(rules, strings.Join(fields, " "))
		}
	}
	return strings.Join(rules, "\n")
}

func itoa(n int) string { return strconv.Itoa(n) }
