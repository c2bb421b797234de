package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/brownie/brownie-sidecar/deploy/monitoring"
	"github.com/brownie/brownie-sidecar/internal/pgtest"
	"github.com/brownie/brownie-sidecar/internal/vaulttest"
	"github.com/brownie/brownie-sidecar/router"
)

// scrape returns the sidecar's /metrics, parsed.
func (sc *sidecar) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := sc.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs
}

// gauge returns the value of family name's sample whose labels include
// want, and whether there is one.
func gauge(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// monitoringEnv is a two-shard stack (primary and replica each) with the
// make dev shard map, a fake Vault issuing 20s certificates, and the
// settings of a sidecar with database metrics, local backups and
// transaction pooling.
type monitoringEnv struct {
	srv *pgtest.Server
	v   *vaulttest.Server
	env map[string]string
	rt  *router.Router // routes by the stack's shard map
}

func newMonitoringEnv(t *testing.T) *monitoringEnv {
	srv := pgtest.Start(t, pgtest.Options{Schema: true, Shards: 2, Replica: true})
	v := vaultFor(t, srv, nil)
	var ports [][2]int
	for _, sh := range srv.Shards {
		ports = append(ports, [2]int{sh.Primary.Port(), sh.Replica.Port()})
	}
	mapFile, err := writeDevShardMap(t.TempDir(), ports, false, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	env := vaultEnv(t, v,
		"VAULT_TOKEN", v.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, Renewable: true}),
		"VAULT_CERT_TTL", "20s",
		"SHARD_MAP_FILE", mapFile,
		"POOL_MODE", "transaction",
		"DB_METRICS_INTERVAL", "2s", "DB_METRICS_QUERY_TIMEOUT", "2s",
		"BACKUP_PROVIDER", "local", "BACKUP_DESTINATION", t.TempDir(), "BACKUP_SCHEDULE", "off",
	)
	text, err := os.ReadFile(mapFile)
	if err != nil {
		t.Fatal(err)
	}
	return &monitoringEnv{srv: srv, v: v, env: env, rt: testRouter(t, string(text))}
}

func uuidLit(u pgtype.UUID) string { return "'" + uuidText(u) + "'" }

// seedBrownie writes Brownie rows through the sidecar, as the API does:
// an organization and a user (replicated: on every shard, two-phase),
// teams placed by their id's hash, and their incidents and agent
// configurations. The teams' ids are drawn until rt places them on
// alternate shards, so every shard of a two-shard map holds some.
func seedBrownie(t *testing.T, conn *pgx.Conn, rt *router.Router) {
	t.Helper()
	ctx := ctx10(t)
	org := newUUID()
	stmts := []string{
		fmt.Sprintf(`INSERT INTO organizations (id, name, slug, is_active, max_teams, max_users_per_team) VALUES (%s, 'Acme', 'acme', true, 10, 10)`, uuidLit(org)),
	}
	shards := rt.Map().ShardNames()
	for i := range 7 {
		team := teamOn(t, rt, shards[i%len(shards)])
		stmts = append(stmts,
			fmt.Sprintf(`INSERT INTO teams (id, org_id, name, slug, is_active, organization_id) VALUES (%s, %s, 'team %d', 'team-%d', true, %s)`,
				uuidLit(team), uuidLit(org), i, i, uuidLit(org)))
		if i == 0 {
			stmts = append(stmts, fmt.Sprintf(`INSERT INTO users (id, org_id, email, username, is_active, is_verified, team_id, role, organization_id)
VALUES (%s, %s, 'ops@example.com', 'ops', true, true, %s, 'ADMIN', %s)`, uuidLit(newUUID()), uuidLit(org), uuidLit(team), uuidLit(org)))
		}
		for j := range i + 1 {
			status := "RESOLVED"
			if j%2 == 0 {
				status = "OPEN"
			}
			stmts = append(stmts, fmt.Sprintf(`INSERT INTO incidents (id, org_id, version, title, status, priority, team_id, organization_id)
VALUES (%s, %s, 1, 'incident %d', '%s', 'HIGH', %s, %s)`, uuidLit(newUUID()), uuidLit(org), j, status, uuidLit(team), uuidLit(org)))
		}
		if i%3 == 0 {
			stmts = append(stmts, fmt.Sprintf(`INSERT INTO agent_configs (id, org_id, version, name, agent_type, is_active, config,
execution_timeout_seconds, max_retries, retry_delay_seconds, team_id, organization_id)
VALUES (%s, %s, 1, 'agent', 'MONITORING', true, '{}', 60, 3, 5, %s, %s)`, uuidLit(newUUID()), uuidLit(org), uuidLit(team), uuidLit(org)))
		}
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// TestMonitoringOfARunningSidecar runs two sidecars with database metrics
// on a two-shard stack configured like make dev's, then: the database
// metrics equal counts made directly on each shard and only one sidecar
// collects them; every metric the alert rules and dashboards name is on a
// running sidecar's /metrics; and a real Prometheus scraping the sidecar
// with the shipped rules fires BrownieReplicaBanned when a replica stops
// and BrownieCertificateExpiringRefreshFailing when Vault is sealed.
// The steps share the stack and run in order.
func TestMonitoringOfARunningSidecar(t *testing.T) {
	e := newMonitoringEnv(t)
	sc1 := startSidecar(t, e.srv, e.env)
	sc1.waitCertReady(t, 15*time.Second)
	// The first sidecar wins the election before the second starts, so
	// that it is the one both collecting and serving the workload below.
	waitFor(t, 20*time.Second, "the first sidecar elected", func() bool {
		v, _ := gauge(sc1.scrape(t), "brownie_db_metrics_leader", nil)
		return v == 1
	})
	sc2 := startSidecar(t, e.srv, e.env)
	sc2.waitCertReady(t, 15*time.Second)
	conn := sc1.connect(t, "")
	seedBrownie(t, conn, e.rt)

	t.Run("DatabaseMetricsEqualDirectCountsAndOneSidecarCollects", func(t *testing.T) {
		counts := map[string]string{
			"brownie_organizations_total":    "SELECT count(*) FROM organizations",
			"brownie_teams_total":            "SELECT count(*) FROM teams",
			"brownie_users_total":            "SELECT count(*) FROM users",
			"brownie_incidents_total":        "SELECT count(*) FROM incidents",
			"brownie_active_incidents_total": "SELECT count(*) FROM incidents WHERE status = 'OPEN'",
			"brownie_agent_configs_total":    "SELECT count(*) FROM agent_configs",
		}
		want := map[string]float64{} // "name shard" → direct count
		var teams float64
		for i, sh := range e.srv.Shards {
			shard := "shard-" + strconv.Itoa(i)
			for name, q := range counts {
				out, err := sh.Primary.Exec(context.Background(), "brownie_metadata", q)
				if err != nil {
					t.Fatal(err)
				}
				n, _ := strconv.ParseFloat(strings.TrimSpace(out), 64)
				want[name+" "+shard] = n
			}
			teams += want["brownie_teams_total "+shard]
		}
		if teams != 7 || want["brownie_teams_total shard-0"] == 0 || want["brownie_teams_total shard-1"] == 0 ||
			want["brownie_organizations_total shard-0"] != 1 || want["brownie_organizations_total shard-1"] != 1 {
			t.Fatalf("the seed did not spread over both shards: %v", want)
		}
		var last map[string]float64
		waitFor(t, 20*time.Second, "database metrics equal to the direct counts", func() bool {
			mfs := sc1.scrape(t)
			last = map[string]float64{}
			ok := true
			for key, n := range want {
				name, shard, _ := strings.Cut(key, " ")
				v, found := gauge(mfs, name, map[string]string{"shard": shard})
				last[key] = v
				ok = ok && found && v == n
			}
			return ok
		})
		mfs := sc1.scrape(t)
		for _, shard := range []string{"shard-0", "shard-1"} {
			if v, _ := gauge(mfs, "brownie_db_table_size_bytes", map[string]string{"shard": shard, "table": "incidents"}); v <= 0 {
				t.Errorf("incidents table size on %s: %v", shard, v)
			}
			size, _ := gauge(mfs, "brownie_db_size_bytes", map[string]string{"shard": shard})
			out, err := e.srv.Shards[shard[len(shard)-1]-'0'].Primary.Exec(context.Background(), "brownie_metadata",
				"SELECT pg_database_size(current_database())")
			if err != nil {
				t.Fatal(err)
			}
			direct, _ := strconv.ParseFloat(out, 64)
			if size < direct*0.9 || size > direct*1.1 {
				t.Errorf("database size of %s: %v, direct %v", shard, size, direct)
			}
			if _, ok := gauge(mfs, "brownie_db_connections_total", map[string]string{"shard": shard, "state": "idle"}); !ok {
				t.Errorf("no idle connection count for %s", shard)
			}
		}
		// The other sidecar runs the same collector but lost the election:
		// it exports none of the gauges.
		mfs2 := sc2.scrape(t)
		if v, ok := gauge(mfs2, "brownie_db_metrics_leader", nil); !ok || v != 0 {
			t.Errorf("second sidecar: leader = %v (exported %v)", v, ok)
		}
		for name := range mfs2 {
			if strings.HasPrefix(name, "brownie_db_size") || (strings.HasPrefix(name, "brownie_") && !strings.HasPrefix(name, "brownie_sidecar_") &&
				!strings.HasPrefix(name, "brownie_db_metrics_")) {
				t.Errorf("the sidecar that lost the election exports %s", name)
			}
		}
		for _, body := range []string{sc1.metricsText(t), sc2.metricsText(t)} {
			if strings.Contains(body, "team_id") {
				t.Error("/metrics has a team_id label")
			}
		}
	})

	t.Run("EveryMetricOfTheRulesAndDashboardsIsExported", func(t *testing.T) {
		exerciseSidecar(t, sc1, conn)
		names := exportedNames(sc1.scrape(t))
		exprs, err := monitoring.Expressions()
		if err != nil {
			t.Fatal(err)
		}
		p := parser.NewParser(parser.Options{})
		used := map[string][]string{}
		for _, ex := range exprs {
			node, err := p.ParseExpr(ex.PromQL)
			if err != nil {
				t.Errorf("%s: %v", ex.Where, err)
				continue
			}
			for _, n := range metricNames(node) {
				used[n] = append(used[n], ex.Where)
			}
		}
		if len(used) < 60 {
			t.Errorf("only %d metric names found in the rules and dashboards", len(used))
		}
		for n, where := range used {
			if n == "up" { // made by Prometheus for each target
				continue
			}
			if !names[n] {
				t.Errorf("%s is not exported by the sidecar; used by %s", n, strings.Join(slices.Compact(where), "; "))
			}
		}
	})

	t.Run("PrometheusFiresAlertsOnAStoppedReplicaAndAnExpiringCertificate", func(t *testing.T) {
		prom := startPrometheus(t, strings.TrimPrefix(sc1.admin, "http://"))
		// Every rule evaluates without error on the real series, and with
		// everything healthy the replica alert is silent.
		rules, err := monitoring.Rules()
		if err != nil {
			t.Fatal(err)
		}
		nRules := 0
		for _, g := range rules.Groups {
			nRules += len(g.Rules)
		}
		waitFor(t, 30*time.Second, "the sidecar scraped and every rule evaluated", func() bool {
			var r struct {
				Data struct {
					Result []any `json:"result"`
				} `json:"data"`
			}
			prom.api(t, "/api/v1/query?query="+url.QueryEscape("brownie_sidecar_host_banned"), &r)
			if len(r.Data.Result) != 4 {
				return false
			}
			ok, n := prom.rulesEvaluated(t)
			return ok && n == nRules
		})
		if a := prom.alert(t, "BrownieReplicaBanned", nil); a != nil {
			t.Fatalf("BrownieReplicaBanned fires with every replica running: %v", a)
		}

		stopCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.srv.Shards[1].Replica.Stop(stopCtx); err != nil {
			t.Fatal(err)
		}
		replica := "127.0.0.1:" + strconv.Itoa(e.srv.Shards[1].Replica.Port())
		waitFor(t, 30*time.Second, "BrownieReplicaBanned firing for the stopped replica", func() bool {
			a := prom.alert(t, "BrownieReplicaBanned", map[string]string{"shard": "shard-1", "addr": replica})
			return a != nil && a["state"] == "firing"
		})
		if a := prom.alert(t, "BrownieReplicaBanned", map[string]string{"shard": "shard-0"}); a != nil {
			t.Errorf("BrownieReplicaBanned fires for shard-0: %v", a)
		}
		if a := prom.alert(t, "DatabaseDown", nil); a != nil {
			t.Errorf("DatabaseDown fires while every primary runs: %v", a)
		}

		// Vault sealed: the 20s certificate's refreshes fail while it
		// nears its end.
		e.v.SetSealed(true)
		defer e.v.SetSealed(false)
		waitFor(t, 40*time.Second, "BrownieCertificateExpiringRefreshFailing firing", func() bool {
			a := prom.alert(t, "BrownieCertificateExpiringRefreshFailing", map[string]string{"source": "vault"})
			return a != nil && a["state"] == "firing"
		})
	})
}

// metricsText returns the sidecar's /metrics as text.
func (sc *sidecar) metricsText(t *testing.T) string {
	t.Helper()
	_, body := sc.get(t, "/metrics")
	return body
}

// exerciseSidecar makes the sidecar create the series that exist only
// after their first event: reads on replicas, a fan-out and a merged read,
// a refused read, a routing error, an upstream error, a cancel, a pinned
// session, a refused client and a backup.
func exerciseSidecar(t *testing.T, sc *sidecar, conn *pgx.Conn) {
	t.Helper()
	ctx := ctx10(t)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM teams WHERE id = $1", newUUID()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "SELECT id FROM incidents ORDER BY created_at DESC LIMIT 3")
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatalf("fan-out: %v", err)
	}
	for sql, code := range map[string]string{
		"SELECT count(DISTINCT id) FROM incidents": "0A000",
		"SELECT * FROM not_a_brownie_table":        "08004",
		"SELECT 1/0":                               "22012",
	} {
		if _, err := conn.Exec(ctx, sql); pgErrCode(err) != code {
			t.Fatalf("%s: %v, want %s", sql, err, code)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = conn.Exec(cctx, "SELECT pg_sleep(5)")
	cancel()
	if err == nil {
		t.Fatal("pg_sleep was not cancelled")
	}
	pinned := sc.connect(t, "")
	if _, err := pinned.Exec(ctx, "LISTEN brownie_events"); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, sc.dsn("dbname=not_brownie")); pgErrCode(err) != "3D000" {
		t.Fatalf("connect to another database: %v", err)
	}
	if code, body := adminCall(t, sc, "POST", "/backup/create", "", nil); code != http.StatusCreated {
		t.Fatalf("backup: %d %s", code, body)
	}
}

// exportedNames are the series names of a scrape: each family's name, and
// for histograms and summaries the _bucket, _sum and _count series.
func exportedNames(mfs map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, mf := range mfs {
		out[name] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// metricNames returns the metric names an expression selects: vector
// selectors' names and __name__ equality matchers.
func metricNames(node parser.Node) []string {
	var out []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name != "" {
			out = append(out, vs.Name)
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == 0 && m.Value != vs.Name {
				out = append(out, m.Value)
			}
		}
		return nil
	})
	return out
}

// promServer is a real Prometheus server (the Debian package's binary)
// scraping a sidecar every second with the shipped rules, their for:
// durations cut to 0s so that alerts fire at the first evaluation that
// sees their condition.
type promServer struct {
	base string
}

var forRE = regexp.MustCompile(`(?m)^(\s+)for: \S+$`)

func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: run `make deps-monitoring` (apt-get install prometheus)")
	}
	dir := t.TempDir()
	rules, err := monitoring.Files.ReadFile(monitoring.RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	rules = forRE.ReplaceAll(rules, []byte("${1}for: 0s"))
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: brownie-sidecar
    static_configs:
      - targets: [%q]
`, target)
	for name, data := range map[string][]byte{"rules.yml": rules, "prometheus.yml": []byte(cfg)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var logs pgtest.Buffer
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus logs:\n%s", logs.String())
		}
	})
	p := &promServer{base: "http://" + addr}
	waitFor(t, 30*time.Second, "prometheus ready", func() bool {
		select {
		case err := <-done:
			t.Fatalf("prometheus exited: %v\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// api GETs a Prometheus API path and decodes the JSON answer into out.
func (p *promServer) api(t *testing.T, path string, out any) {
	t.Helper()
	resp, err := http.Get(p.base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, errors.Join(err, fmt.Errorf("%s", body)))
	}
}

// rulesEvaluated reports whether every loaded rule has been evaluated
// without error since the sidecar's series appeared, and how many rules
// are loaded. A rule that failed evaluating fails the test.
func (p *promServer) rulesEvaluated(t *testing.T) (bool, int) {
	t.Helper()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name           string    `json:"name"`
					Health         string    `json:"health"`
					LastError      string    `json:"lastError"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	p.api(t, "/api/v1/rules", &r)
	n, ok := 0, true
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			n++
			if rule.Health == "err" {
				t.Fatalf("rule %s fails: %s", rule.Name, rule.LastError)
			}
			ok = ok && rule.Health == "ok"
		}
	}
	return ok, n
}

// alert returns the active alert named name whose labels include labels,
// as Prometheus's /api/v1/alerts reports it (with "state"), or nil.
func (p *promServer) alert(t *testing.T, name string, labels map[string]string) map[string]any {
	t.Helper()
	var r struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	p.api(t, "/api/v1/alerts", &r)
next:
	for _, a := range r.Data.Alerts {
		if a.Labels["alertname"] != name {
			continue
		}
		for k, v := range labels {
			if a.Labels[k] != v {
				continue next
			}
		}
		return map[string]any{"state": a.State, "labels": a.Labels}
	}
	return nil
}
