package monitoring_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/brownie/brownie-sidecar/deploy/monitoring"
)

// tool finds a Prometheus or Alertmanager program; `make deps-monitoring`
// installs them (Debian prometheus and prometheus-alertmanager).
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make deps-monitoring` (apt-get install prometheus prometheus-alertmanager)", name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRulesPassPromtoolCheckAndTheirUnitTests(t *testing.T) {
	out := run(t, "promtool", "check", "rules", monitoring.RulesFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules:\n%s", out)
	}
	out = run(t, "promtool", "test", "rules", monitoring.RulesTestFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// The unit tests are only worth something if each alert has one: series
// that cross its threshold and make it fire, and series below it that
// leave it silent.
func TestEveryAlertHasAFiringAndASilentUnitTest(t *testing.T) {
	rf, err := monitoring.Rules()
	if err != nil {
		t.Fatal(err)
	}
	b, err := monitoring.Files.ReadFile(monitoring.RulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tf.RuleFiles, []string{filepath.Base(monitoring.RulesFile)}) {
		t.Errorf("the unit tests load %v, not the rule file", tf.RuleFiles)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("alert %s: unit test that fires %v, that stays silent %v", r.Alert, fires[r.Alert], silent[r.Alert])
			}
			switch r.Labels["severity"] {
			case "critical", "warning":
			default:
				t.Errorf("alert %s: severity %q is not routed by alertmanager.yml (critical or warning)", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a summary or a description", r.Alert)
			}
		}
	}
	if alerts < 20 {
		t.Errorf("only %d alerts", alerts)
	}
}

func TestEveryRuleAndDashboardExpressionParses(t *testing.T) {
	exprs, err := monitoring.Expressions()
	if err != nil {
		t.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	for _, e := range exprs {
		if _, err := p.ParseExpr(e.PromQL); err != nil {
			t.Errorf("%s: %q: %v", e.Where, e.PromQL, err)
		}
		if strings.Contains(e.PromQL, "team_id") {
			t.Errorf("%s uses a team_id label", e.Where)
		}
	}
	if len(exprs) < 80 {
		t.Errorf("only %d expressions", len(exprs))
	}
}

func TestDashboardsAreProvisionableAndUseTheirDatasourceVariable(t *testing.T) {
	dashboards, err := monitoring.Dashboards()
	if err != nil {
		t.Fatal(err)
	}
	uids := map[string]string{}
	var titles []string
	for name, d := range dashboards {
		uid, _ := d["uid"].(string)
		if uid == "" || uid+".json" != name {
			t.Errorf("%s: uid %q should be the file name", name, uid)
		}
		if other, ok := uids[uid]; ok {
			t.Errorf("%s and %s share uid %s", name, other, uid)
		}
		uids[uid] = name
		title, _ := d["title"].(string)
		titles = append(titles, title)
		ids := map[float64]bool{}
		for _, p := range monitoring.Panels(d) {
			id, _ := p["id"].(float64)
			if id == 0 || ids[id] {
				t.Errorf("%s: panel %q has a missing or repeated id %v", name, p["title"], p["id"])
			}
			ids[id] = true
			if p["gridPos"] == nil || p["title"] == "" {
				t.Errorf("%s: panel %v lacks a title or gridPos", name, p["id"])
			}
			switch p["type"] {
			case "row", "text":
				continue
			}
			targets, _ := p["targets"].([]any)
			if len(targets) == 0 {
				t.Errorf("%s: panel %q has no query", name, p["title"])
			}
			for _, tg := range append([]any{p}, targets...) {
				ds, _ := tg.(map[string]any)["datasource"].(map[string]any)
				if ds["uid"] != "${datasource}" || ds["type"] != "prometheus" {
					t.Errorf("%s: panel %q: datasource %v, want the ${datasource} variable", name, p["title"], ds)
				}
			}
		}
	}
	slices.Sort(titles)
	for _, topic := range []string{"pool", "latency", "fan-out", "two-phase", "replica", "failover", "certificate", "vault", "backup", "database"} {
		found := false
		for _, d := range dashboards {
			b := strings.ToLower(strings.Join(panelTitles(d), "\n"))
			found = found || strings.Contains(b, topic)
		}
		if !found {
			t.Errorf("no dashboard panel covers %s (dashboards %v)", topic, titles)
		}
	}

	// Decoded strictly: a misspelt field fails.
	var prov struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name                  string `yaml:"name"`
			OrgID                 int    `yaml:"orgId"`
			Folder                string `yaml:"folder"`
			FolderUID             string `yaml:"folderUid"`
			Type                  string `yaml:"type"`
			DisableDeletion       bool   `yaml:"disableDeletion"`
			AllowUIUpdates        bool   `yaml:"allowUiUpdates"`
			UpdateIntervalSeconds int    `yaml:"updateIntervalSeconds"`
			Options               struct {
				Path                      string `yaml:"path"`
				FoldersFromFilesStructure bool   `yaml:"foldersFromFilesStructure"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	b, err := monitoring.Files.ReadFile("grafana/provisioning/dashboards/brownie.yml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&prov); err != nil {
		t.Fatalf("dashboard provisioning: %v", err)
	}
	if prov.APIVersion != 1 || len(prov.Providers) != 1 || prov.Providers[0].Type != "file" || prov.Providers[0].Options.Path == "" {
		t.Errorf("dashboard provisioning: %+v", prov)
	}
}

func panelTitles(d map[string]any) []string {
	var out []string
	for _, p := range monitoring.Panels(d) {
		s, _ := p["title"].(string)
		out = append(out, s)
	}
	return out
}

func TestAlertmanagerConfigIsValidRoutesBySeverityAndHoldsNoSecret(t *testing.T) {
	out := run(t, "amtool", "check-config", monitoring.AlertmanagerFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("amtool check-config:\n%s", out)
	}
	for _, tc := range []struct {
		labels    []string
		receivers string
	}{
		{[]string{"severity=critical", "alertname=DatabaseDown", "shard=shard-0"}, "critical,msteams"},
		{[]string{"severity=warning", "alertname=BrownieReplicaLagging"}, "warning,msteams"},
		{[]string{"severity=info", "alertname=Something"}, "email-ops"},
	} {
		args := append([]string{"config", "routes", "test", "--config.file=" + monitoring.AlertmanagerFile, "--verify.receivers=" + tc.receivers}, tc.labels...)
		run(t, "amtool", args...)
	}
	b, err := os.ReadFile(monitoring.AlertmanagerFile)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Receivers []map[string]any `yaml:"receivers"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, r := range cfg.Receivers {
		for k := range r {
			kinds[k] = true
		}
	}
	for _, k := range []string{"pagerduty_configs", "email_configs", "slack_configs", "webhook_configs"} {
		if !kinds[k] {
			t.Errorf("no receiver has %s", k)
		}
	}
	// Credentials only as *_file references.
	inline := regexp.MustCompile(`(?m)^\s*(smtp_auth_password|auth_password|api_url|slack_api_url|routing_key|service_key|webhook_url|bearer_token|password):`)
	if m := inline.FindAllString(string(b), -1); len(m) > 0 {
		t.Errorf("inline secrets in alertmanager.yml: %q", m)
	}
}
