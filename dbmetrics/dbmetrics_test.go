package dbmetrics_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/brownie/brownie-sidecar/dbmetrics"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/pgcluster"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seed inserts Brownie rows on one shard's primary: orgs organizations,
// teams teams, users users, incidents incidents (every other one OPEN)
// and agents agent configurations.
func seed(t *testing.T, c *pgcluster.Cluster, orgs, teams, users, incidents, agents int) {
	t.Helper()
	sql := fmt.Sprintf(`
INSERT INTO organizations (id, name, slug, is_active, max_teams, max_users_per_team)
  SELECT gen_random_uuid(), 'org' || g, 'org-' || g || '-' || gen_random_uuid(), true, 10, 10 FROM generate_series(1, %d) g;
INSERT INTO teams (id, org_id, name, slug, is_active, organization_id)
  SELECT gen_random_uuid(), o.id, 'team' || g, 'team-' || gen_random_uuid(), true, o.id
  FROM generate_series(1, %d) g, (SELECT id FROM organizations LIMIT 1) o;
INSERT INTO users (id, org_id, email, username, is_active, is_verified, team_id, role, organization_id)
  SELECT gen_random_uuid(), o.id, gen_random_uuid() || '@example.com', 'u-' || gen_random_uuid(), true, true, gen_random_uuid(), 'MEMBER', o.id
  FROM generate_series(1, %d) g, (SELECT id FROM organizations LIMIT 1) o;
INSERT INTO incidents (id, org_id, version, title, status, priority, team_id, organization_id)
  SELECT gen_random_uuid(), t.organization_id, 1, 'incident ' || g, CASE WHEN g %% 2 = 0 THEN 'OPEN' ELSE 'RESOLVED' END::incidentstatus, 'LOW', t.id, t.organization_id
  FROM generate_series(1, %d) g, (SELECT id, organization_id FROM teams LIMIT 1) t;
INSERT INTO agent_configs (id, org_id, version, name, agent_type, is_active, config, execution_timeout_seconds, max_retries, retry_delay_seconds, team_id, organization_id)
  SELECT gen_random_uuid(), t.organization_id, 1, 'agent ' || g, 'MONITORING', true, '{}', 60, 3, 5, t.id, t.organization_id
  FROM generate_series(1, %d) g, (SELECT id, organization_id FROM teams LIMIT 1) t;
`, orgs, teams, users, incidents, agents)
	if _, err := c.Exec(context.Background(), "brownie_metadata", sql); err != nil {
		t.Fatal(err)
	}
}

// fixture is shards of a real cluster and collectors over them, each with
// its own registry, connecting with the client certificate and electing
// with the advisory lock exactly as the sidecar does (the sidecar's own
// connections are its wire client; here they are pgconn's).
type fixture struct {
	srv    *pgtest.Server
	shards []string
	dsn    map[string]string
}

func (f *fixture) collector(t *testing.T, reg *prometheus.Registry) *dbmetrics.Collector {
	t.Helper()
	dial := func(ctx context.Context, shard string) (dbmetrics.Conn, error) {
		dsn, ok := f.dsn[shard]
		if !ok {
			return nil, fmt.Errorf("no shard %s", shard)
		}
		c, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			return nil, err
		}
		return wireConn{c}, nil
	}
	c, err := dbmetrics.New(config.DBMetrics{Interval: time.Second, QueryTimeout: 5 * time.Second}, dbmetrics.Deps{
		Registerer: reg,
		Shards:     func() []string { return f.shards },
		Connect:    dial,
		Elector: dbmetrics.AdvisoryElector{Dial: func(ctx context.Context) (dbmetrics.Conn, error) {
			return dial(ctx, f.shards[0])
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wireConn is a dbmetrics.Conn over pgconn.
type wireConn struct{ c *pgconn.PgConn }

func (w wireConn) Exec(sql string, onRow func([][]byte)) error {
	results, err := w.c.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		return err
	}
	for _, r := range results {
		for _, row := range r.Rows {
			if onRow != nil {
				onRow(row)
			}
		}
	}
	return nil
}

func (w wireConn) SetDeadline(t time.Time) error { return w.c.Conn().SetDeadline(t) }

func (w wireConn) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return w.c.Close(ctx)
}

// samples gathers reg as "name{label=value,...}" → value, labels sorted
// by name.
func samples(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func newFixture(t *testing.T, shards int) *fixture {
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Shards: shards})
	f := &fixture{srv: srv, dsn: map[string]string{}}
	for i, sh := range srv.Shards {
		name := "shard-" + strconv.Itoa(i)
		f.shards = append(f.shards, name)
		f.dsn[name] = srv.DSN(sh.Primary, "brownie_metadata") + " application_name=brownie-sidecar-dbmetrics"
	}
	return f
}

// direct counts on a shard's primary.
func direct(t *testing.T, c *pgcluster.Cluster, sql string) float64 {
	t.Helper()
	out, err := c.Exec(context.Background(), "brownie_metadata", sql)
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		t.Fatalf("%s: %q", sql, out)
	}
	return v
}

func TestOneOfTwoCollectorsCollectsAndTheOtherTakesOverWhenItStops(t *testing.T) {
	f := newFixture(t, 1)
	seed(t, f.srv.Primary, 3, 4, 5, 7, 2)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	a, b := f.collector(t, regA), f.collector(t, regB)
	ctx := context.Background()

	ctxA, stopA := context.WithCancel(ctx)
	doneA := make(chan error, 1)
	go func() { doneA <- a.Run(ctxA) }()
	pgtest.WaitFor(t, 15*time.Second, "collector A elected", func() bool {
		return samples(t, regA)["brownie_db_metrics_leader{}"] == 1
	})
	pgtest.WaitFor(t, 15*time.Second, "collector A's gauges", func() bool {
		return samples(t, regA)["brownie_teams_total{shard=shard-0}"] == 4
	})
	b.Round(ctx)
	sb := samples(t, regB)
	if sb["brownie_db_metrics_leader{}"] != 0 {
		t.Fatalf("both collectors elected: %v", sb)
	}
	for k := range sb {
		if strings.HasPrefix(k, "brownie_db_size") || strings.HasPrefix(k, "brownie_teams") {
			t.Fatalf("the collector that lost the election exports %s", k)
		}
	}

	sa := samples(t, regA)
	for name, want := range map[string]float64{
		"brownie_organizations_total":    3,
		"brownie_teams_total":            4,
		"brownie_users_total":            5,
		"brownie_incidents_total":        7,
		"brownie_active_incidents_total": 3,
		"brownie_agent_configs_total":    2,
	} {
		if got := sa[name+"{shard=shard-0}"]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if sa["brownie_db_size_bytes{shard=shard-0}"] < 1e6 || sa["brownie_db_table_size_bytes{shard=shard-0,table=incidents}"] <= 0 {
		t.Errorf("sizes: %v", sa)
	}
	if _, ok := sa["brownie_db_connections_total{shard=shard-0,state=idle_in_transaction}"]; !ok {
		t.Errorf("connection states not all exported: %v", sa)
	}
	for k := range sa {
		if strings.Contains(k, "team_id") {
			t.Errorf("a metric is labelled by team: %s", k)
		}
	}
	// The elected collector holds its lock on a connection of its own:
	// pg_stat_activity shows it idle.
	if got := sa["brownie_db_connections_total{shard=shard-0,state=idle}"]; got < 1 {
		t.Errorf("idle connections = %v, want at least the lock's", got)
	}

	// A stops (its pod goes away): it stops exporting, and B wins the next
	// round.
	stopA()
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	if got := samples(t, regA); got["brownie_db_metrics_leader{}"] != 0 || got["brownie_teams_total{shard=shard-0}"] != 0 {
		t.Fatalf("a stopped collector still exports: %v", got)
	}
	b.Round(ctx)
	sb = samples(t, regB)
	if sb["brownie_db_metrics_leader{}"] != 1 || sb["brownie_incidents_total{shard=shard-0}"] != 7 {
		t.Fatalf("collector B did not take over: %v", sb)
	}
	stopB, cancelB := context.WithCancel(ctx)
	cancelB()
	_ = b.Run(stopB) // one round on a cancelled context, then the lock is released
}

func TestAFailedShardLosesItsGaugesAndCountsAFailure(t *testing.T) {
	f := newFixture(t, 2)
	seed(t, f.srv.Shards[0].Primary, 1, 2, 1, 4, 1)
	seed(t, f.srv.Shards[1].Primary, 1, 3, 1, 6, 0)
	reg := prometheus.NewRegistry()
	c := f.collector(t, reg)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		_ = c.Run(ctx) // releases the lock
	}()
	c.Round(ctx)
	s := samples(t, reg)
	for i, sh := range f.srv.Shards {
		shard := fmt.Sprintf("shard=shard-%d", i)
		for name, q := range map[string]string{
			"brownie_teams_total":            "SELECT count(*) FROM teams",
			"brownie_incidents_total":        "SELECT count(*) FROM incidents",
			"brownie_active_incidents_total": "SELECT count(*) FROM incidents WHERE status = 'OPEN'",
			"brownie_agent_configs_total":    "SELECT count(*) FROM agent_configs",
			"brownie_db_size_bytes":          "SELECT pg_database_size(current_database())",
		} {
			got, want := s[name+"{"+shard+"}"], direct(t, sh.Primary, q)
			if name == "brownie_db_size_bytes" {
				if got < want/2 || got > want*2 {
					t.Errorf("%s{%s} = %v, direct %v", name, shard, got, want)
				}
				continue
			}
			if got != want {
				t.Errorf("%s{%s} = %v, direct %v", name, shard, got, want)
			}
		}
		if s["brownie_db_metrics_failures_total{"+shard+"}"] != 0 {
			t.Errorf("failures before any failure: %v", s)
		}
	}

	// shard-1's primary stops: its gauges go, a failure is counted, and
	// shard-0 keeps being collected.
	stopCtx, stopCancel := context.WithTimeout(context.Background(), time.Minute)
	defer stopCancel()
	if err := f.srv.Shards[1].Primary.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	c.Round(ctx)
	s = samples(t, reg)
	if s["brownie_db_metrics_failures_total{shard=shard-1}"] != 1 {
		t.Errorf("failures of the stopped shard: %v", s)
	}
	for k := range s {
		if strings.Contains(k, "shard=shard-1") && !strings.HasPrefix(k, "brownie_db_metrics_failures_total") {
			t.Errorf("stale gauge of the stopped shard: %s", k)
		}
	}
	if s["brownie_teams_total{shard=shard-0}"] != 2 || s["brownie_db_metrics_failures_total{shard=shard-0}"] != 0 {
		t.Errorf("shard-0 after shard-1 failed: %v", s)
	}
	if err := f.srv.Shards[1].Primary.Start(stopCtx); err != nil {
		t.Fatal(err)
	}
	c.Round(ctx)
	if got := samples(t, reg)["brownie_teams_total{shard=shard-1}"]; got != 3 {
		t.Errorf("shard-1 back: teams = %v", got)
	}
}
