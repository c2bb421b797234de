// Package monitoring holds the Brownie sidecar's monitoring files: the
// Prometheus alert rules and their promtool unit tests, the Alertmanager
// configuration, and the Grafana dashboards with their provisioning. The
// files are the product (Kubernetes manifests and the Helm chart are
// generated from them); this package embeds them for tests and lists the
// PromQL expressions they contain. It must not be imported by the sidecar
// binary, and it parses no PromQL itself (the tests do, with Prometheus's
// own parser).
package monitoring

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Files are the monitoring files, by their path under deploy/monitoring.
//
//go:embed prometheus/brownie-rules.yml prometheus/brownie-rules.test.yml
//go:embed alertmanager/alertmanager.yml
//go:embed grafana/dashboards/*.json grafana/provisioning
var Files embed.FS

// Paths of the files within Files.
const (
	RulesFile        = "prometheus/brownie-rules.yml"
	RulesTestFile    = "prometheus/brownie-rules.test.yml"
	AlertmanagerFile = "alertmanager/alertmanager.yml"
	DashboardsDir    = "grafana/dashboards"
)

// Expr is one PromQL expression of a rule or a dashboard.
type Expr struct {
	// Where names the file and the rule or panel.
	Where string
	// PromQL is the expression, with Grafana's variables replaced by values
	// that make it valid PromQL ($__rate_interval by 5m, $__range by 1h…).
	PromQL string
}

// RuleFile is the part of a Prometheus rule file the tests read.
type RuleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []Rule `yaml:"rules"`
	} `yaml:"groups"`
}

// Rule is one alerting or recording rule.
type Rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// Rules parses the rule file.
func Rules() (RuleFile, error) {
	var rf RuleFile
	b, err := Files.ReadFile(RulesFile)
	if err != nil {
		return rf, err
	}
	return rf, yaml.Unmarshal(b, &rf)
}

// Dashboards returns every dashboard, decoded, by file name.
func Dashboards() (map[string]map[string]any, error) {
	entries, err := fs.ReadDir(Files, DashboardsDir)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]any{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := Files.ReadFile(path.Join(DashboardsDir, e.Name()))
		if err != nil {
			return nil, err
		}
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name(), err)
		}
		out[e.Name()] = d
	}
	return out, nil
}

// grafanaVars are Grafana's built-in interval variables and the values
// that stand for them in checks.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m", "$__range", "1h", "${__range}", "1h")

// labelValues matches a Grafana variable query label_values(metric, label).
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$`)

// Expressions returns every PromQL expression of the rules and the
// dashboards (panel targets and variable queries).
func Expressions() ([]Expr, error) {
	rf, err := Rules()
	if err != nil {
		return nil, err
	}
	var out []Expr
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			out = append(out, Expr{Where: fmt.Sprintf("%s: group %s rule %s%s", RulesFile, g.Name, r.Alert, r.Record), PromQL: r.Expr})
		}
	}
	dashboards, err := Dashboards()
	if err != nil {
		return nil, err
	}
	for name, d := range dashboards {
		for _, p := range Panels(d) {
			targets, _ := p["targets"].([]any)
			for _, t := range targets {
				tm, _ := t.(map[string]any)
				if e, ok := tm["expr"].(string); ok {
					out = append(out, Expr{Where: fmt.Sprintf("%s: panel %q", name, p["title"]), PromQL: grafanaVars.Replace(e)})
				}
			}
		}
		tl, _ := d["templating"].(map[string]any)
		vars, _ := tl["list"].([]any)
		for _, v := range vars {
			vm, _ := v.(map[string]any)
			if vm["type"] != "query" {
				continue
			}
			q, _ := vm["definition"].(string)
			if m := labelValues.FindStringSubmatch(q); m != nil {
				q = m[1]
			}
			out = append(out, Expr{Where: fmt.Sprintf("%s: variable %s", name, vm["name"]), PromQL: grafanaVars.Replace(q)})
		}
	}
	return out, nil
}

// Panels returns every panel of a dashboard, including those nested in
// rows.
func Panels(d map[string]any) []map[string]any {
	var out []map[string]any
	var walk func([]any)
	walk = func(ps []any) {
		for _, p := range ps {
			pm, ok := p.(map[string]any)
			if !ok {
				continue
			}
			out = append(out, pm)
			if nested, ok := pm["panels"].([]any); ok {
				walk(nested)
			}
		}
	}
	ps, _ := d["panels"].([]any)
	walk(ps)
	return out
}
