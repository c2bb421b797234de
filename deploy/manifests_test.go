package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/brownie/brownie-sidecar/deploy/internal/gen"
	"github.com/brownie/brownie-sidecar/inject"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/k8stest"
	"github.com/brownie/brownie-sidecar/router"
)

func TestGeneratedFilesAreUpToDate(t *testing.T) {
	want, err := gen.Files(".")
	if err != nil {
		t.Fatal(err)
	}
	for rel, data := range want {
		got, err := os.ReadFile(rel)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("deploy/%s is stale: run go generate ./deploy (or make generate)", rel)
		}
	}
	for _, dir := range []string{gen.BaseDir, filepath.Join(gen.ChartDir, "files")} {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && filepath.Base(p) != "README.md" {
				if _, ok := want[p]; !ok {
					t.Errorf("deploy/%s is no longer generated: run go generate ./deploy", p)
				}
			}
			return nil
		})
	}
}

// decodeAll decodes a stream strictly and fails the test on any problem.
func decodeAll(t *testing.T, what string, stream []byte) []k8stest.Object {
	t.Helper()
	objs, err := k8stest.DecodeManifests(stream)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(objs) == 0 {
		t.Fatalf("%s: no object", what)
	}
	return objs
}

func TestEveryBaseManifestDecodesStrictly(t *testing.T) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	data, err := os.ReadFile(filepath.Join(gen.BaseDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(gen.BaseDir, "*.yaml"))
	if len(k.Resources) != len(files)-1 {
		t.Errorf("kustomization lists %d resources, the base has %d files besides it", len(k.Resources), len(files)-1)
	}
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join(gen.BaseDir, r))
		if err != nil {
			t.Fatal(err)
		}
		decodeAll(t, r, b)
	}
}

func kustomizeBuild(t *testing.T, dir string) []k8stest.Object {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, "kustomize build "+dir, out)
}

func find[T any](t *testing.T, objs []k8stest.Object, kind, name string) T {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind && o.Name == name {
			return o.Value.(T)
		}
	}
	t.Fatalf("no %s %s", kind, name)
	var zero T
	return zero
}

func count(objs []k8stest.Object, kind string) int {
	n := 0
	for _, o := range objs {
		if o.Kind == kind {
			n++
		}
	}
	return n
}

func TestKustomizeBuildsDecodeStrictly(t *testing.T) {
	base := kustomizeBuild(t, "k8s/base")
	checkInstallation(t, "base", base, 2, 1)

	dev := kustomizeBuild(t, "k8s/overlays/dev")
	checkInstallation(t, "dev", dev, 2, 1)
	inj := find[*appsv1.Deployment](t, dev, "Deployment", "brownie-sidecar-injector")
	if *inj.Spec.Replicas != 1 || inj.Spec.Template.Spec.Containers[0].Image != "ghcr.io/brownie/brownie-sidecar:dev" ||
		envValue(inj.Spec.Template.Spec.Containers[0], "INJECT_IMAGE") != "ghcr.io/brownie/brownie-sidecar:dev" {
		t.Errorf("dev injector: replicas %d image %s", *inj.Spec.Replicas, inj.Spec.Template.Spec.Containers[0].Image)
	}

	prod := kustomizeBuild(t, "k8s/overlays/prod")
	checkInstallation(t, "prod", prod, 2, 1)
	for _, o := range prod {
		if o.Name == "brownie-api" {
			t.Errorf("prod has the example app's %s", o.Kind)
		}
	}
	for _, o := range prod {
		if s, ok := o.Value.(*appsv1.StatefulSet); ok {
			if sc := s.Spec.VolumeClaimTemplates[0].Spec.StorageClassName; sc == nil || *sc != "fast-ssd" {
				t.Errorf("prod %s storage class %v", s.Name, sc)
			}
		}
	}
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// checkInstallation checks what ties the objects together: the injector
// configuration loads, the webhook calls its path over its Service, the
// shard map is one the router accepts with the expected shards, each shard
// has its StatefulSets, Services and certificate, the PrometheusRule is the
// rule file, and the example app's pod, injected by the real injector with
// the Deployment's configuration, gets a sidecar environment that is a valid
// sidecar configuration.
func checkInstallation(t *testing.T, what string, objs []k8stest.Object, shards, replicas int) {
	t.Helper()
	injector := find[*appsv1.Deployment](t, objs, "Deployment", "brownie-sidecar-injector")
	ic := injector.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range ic.Env {
		env[e.Name] = e.Value
	}
	icfg, err := config.LoadInject(env)
	if err != nil {
		t.Fatalf("%s: injector environment: %v", what, err)
	}
	in, err := inject.New(icfg, inject.Deps{})
	if err != nil {
		t.Fatalf("%s: injector: %v", what, err)
	}
	if len(ic.Args) != 1 || ic.Args[0] != "inject" {
		t.Errorf("%s: injector args %v", what, ic.Args)
	}

	wh := find[*admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", "brownie-sidecar-injector")
	w := wh.Webhooks[0]
	if w.ClientConfig.Service == nil || *w.ClientConfig.Service.Path != inject.Path || w.ClientConfig.Service.Name != "brownie-sidecar-injector" ||
		*w.SideEffects != admissionregistrationv1.SideEffectClassNone || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy ||
		w.FailurePolicy == nil || w.NamespaceSelector == nil || w.NamespaceSelector.MatchLabels["brownie.ai/injection"] != "enabled" {
		t.Errorf("%s: webhook %+v", what, w)
	}
	svc := find[*corev1.Service](t, objs, "Service", "brownie-sidecar-injector")
	if svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.StrVal != "webhook" {
		t.Errorf("%s: injector service ports %+v", what, svc.Spec.Ports)
	}
	if count(objs, "PodDisruptionBudget") != 1 {
		t.Errorf("%s: no PodDisruptionBudget", what)
	}

	cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "brownie-shard-map")
	m, err := router.ParseMap([]byte(cm.Data["brownie.yaml"]))
	if err != nil {
		t.Fatalf("%s: shard map: %v", what, err)
	}
	if len(m.Shards) != shards {
		t.Errorf("%s: shard map has %d shards, want %d", what, len(m.Shards), shards)
	}
	for i, sh := range m.Shards {
		if len(sh.Replicas) != replicas {
			t.Errorf("%s: %s has %d replicas, want %d", what, sh.Name, len(sh.Replicas), replicas)
		}
		primary := find[*appsv1.StatefulSet](t, objs, "StatefulSet", fmt.Sprintf("brownie-shard-%d-primary", i))
		if !slices.Contains(primary.Spec.Template.Spec.Containers[0].Args, "config_file=/etc/brownie/postgres/postgresql.conf") {
			t.Errorf("%s: primary args %v", what, primary.Spec.Template.Spec.Containers[0].Args)
		}
		if replicas > 0 {
			rs := find[*appsv1.StatefulSet](t, objs, "StatefulSet", fmt.Sprintf("brownie-shard-%d-replica", i))
			if int(*rs.Spec.Replicas) != replicas {
				t.Errorf("%s: %s has %d pods", what, rs.Name, *rs.Spec.Replicas)
			}
			find[*corev1.Service](t, objs, "Service", fmt.Sprintf("brownie-shard-%d-replica", i))
		}
		find[*corev1.Service](t, objs, "Service", fmt.Sprintf("brownie-shard-%d-primary", i))
		find[*k8stest.CertManagerObject](t, objs, "Certificate", fmt.Sprintf("brownie-shard-%d-server-tls", i))
	}
	pg := find[*corev1.ConfigMap](t, objs, "ConfigMap", "brownie-postgres-config")
	for _, line := range []string{"hostssl all          all         0.0.0.0/0   cert", "hostssl replication  replicator  0.0.0.0/0   cert"} {
		if !strings.Contains(pg.Data["pg_hba.conf"], line) {
			t.Errorf("%s: pg_hba.conf lacks %q", what, line)
		}
	}
	for _, l := range strings.Split(pg.Data["pg_hba.conf"], "\n") {
		if f := strings.Fields(l); len(f) > 0 && !strings.HasPrefix(f[0], "#") && f[0] != "local" && f[len(f)-1] != "cert" {
			t.Errorf("%s: pg_hba.conf line %q is not certificate-only", what, l)
		}
	}
	if !strings.Contains(pg.Data["postgresql.conf"], "max_prepared_transactions = ") || !strings.Contains(pg.Data["sidecar.conf"], "ssl = on") {
		t.Errorf("%s: postgres config %v", what, pg.Data["postgresql.conf"])
	}
	sqlCM := find[*corev1.ConfigMap](t, objs, "ConfigMap", "brownie-schema-sql")
	if len(sqlCM.Data) != 4 {
		t.Errorf("%s: schema ConfigMap has %d scripts", what, len(sqlCM.Data))
	}
	find[*batchv1.Job](t, objs, "Job", "brownie-schema")

	rule := find[*monitoringv1.PrometheusRule](t, objs, "PrometheusRule", "brownie-sidecar")
	checkRulesAreTheRuleFile(t, what, rule)

	// The example app's pod through the real injector, configured as the
	// Deployment configures it, then its sidecar's environment with the
	// ConfigMap's keys through the sidecar's own configuration loader.
	if count(objs, "Deployment") < 2 {
		return // no example app
	}
	app := find[*appsv1.Deployment](t, objs, "Deployment", "brownie-api")
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: app.Spec.Template.ObjectMeta, Spec: app.Spec.Template.Spec}
	pod.Name = "brownie-api-0"
	body, err := k8stest.ReviewFor("u", app.Namespace, pod)
	if err != nil {
		t.Fatal(err)
	}
	out, err := in.Review(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := k8stest.Response(out)
	if err != nil || !resp.Allowed {
		t.Fatalf("%s: example app not injected: %v %+v", what, err, resp)
	}
	patched, err := k8stest.ApplyPatch(pod, resp)
	if err != nil {
		t.Fatal(err)
	}
	sc := patched.Spec.InitContainers[0]
	sidecarCM := find[*corev1.ConfigMap](t, objs, "ConfigMap", sc.EnvFrom[0].ConfigMapRef.Name)
	senv := map[string]string{}
	for k, v := range sidecarCM.Data {
		senv[k] = v
	}
	for _, e := range sc.Env {
		senv[e.Name] = e.Value
		if e.ValueFrom != nil {
			senv[e.Name] = "from-" + e.Name // a secret or resource value
		}
	}
	if _, err := config.Load(senv); err != nil {
		t.Errorf("%s: injected sidecar environment: %v", what, err)
	}
	for _, v := range patched.Spec.Volumes {
		if v.ConfigMap != nil {
			find[*corev1.ConfigMap](t, objs, "ConfigMap", v.ConfigMap.Name)
		}
	}
}

func checkRulesAreTheRuleFile(t *testing.T, what string, rule *monitoringv1.PrometheusRule) {
	t.Helper()
	data, err := os.ReadFile("monitoring/prometheus/brownie-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var file monitoringv1.PrometheusRuleSpec
	if err := k8stest.DecodeYAML(data, &file); err != nil {
		t.Fatalf("rule file: %v", err)
	}
	a, _ := json.Marshal(file)
	b, _ := json.Marshal(rule.Spec)
	if !bytes.Equal(a, b) || len(file.Groups) == 0 {
		t.Errorf("%s: PrometheusRule differs from deploy/monitoring/prometheus/brownie-rules.yml", what)
	}
}

// threeShards is a value set of a larger installation.
var threeShards = map[string]any{
	"shards": map[string]any{
		"count": 3, "replicasPerShard": 2, "synchronousReplication": true,
		"overrides": map[string]any{"7b0c6f1e-8d1c-4a3e-9f57-2f1a9c4d5e60": "shard-2"},
		"storage":   map[string]any{"size": "50Gi", "storageClassName": "fast-ssd"},
	},
	"namespaces": map[string]any{"apps": []any{"brownie-apps", "brownie-agents"}},
	"sidecar":    map[string]any{"poolMode": "session", "poolSize": 50, "certMode": "secret", "dbMetricsInterval": "off"},
	"injector":   map[string]any{"replicas": 3},
}

func render(t *testing.T, values map[string]any) ([]k8stest.Object, error) {
	t.Helper()
	out, err := gen.Render(gen.ChartDir, nil, values, "brownie", "brownie-system", "Helm")
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	var objs []k8stest.Object
	for _, n := range names {
		objs = append(objs, decodeAll(t, "template "+n, []byte(out[n]))...)
	}
	return objs, nil
}

func TestHelmChartRendersDecodeStrictly(t *testing.T) {
	objs, err := render(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkInstallation(t, "chart defaults", objs, 2, 1)
	if count(objs, "ConfigMap") < 5 {
		t.Errorf("chart defaults: %d ConfigMaps", count(objs, "ConfigMap"))
	}
	dash := find[*corev1.ConfigMap](t, objs, "ConfigMap", "brownie-grafana-dashboards")
	if dash.Labels["grafana_dashboard"] != "1" || len(dash.Data) == 0 {
		t.Errorf("dashboards ConfigMap %v", dash.Labels)
	}
	for name, js := range dash.Data {
		var v map[string]any
		if err := json.Unmarshal([]byte(js), &v); err != nil {
			t.Errorf("dashboard %s: %v", name, err)
		}
	}

	big, err := render(t, threeShards)
	if err != nil {
		t.Fatal(err)
	}
	checkInstallation(t, "three shards", big, 3, 2)
	maps := 0
	for _, o := range big {
		if o.Kind == "ConfigMap" && o.Name == "brownie-shard-map" {
			maps++
			m, err := router.ParseMap([]byte(o.Value.(*corev1.ConfigMap).Data["brownie.yaml"]))
			if err != nil || len(m.Overrides) != 1 {
				t.Errorf("%s shard map: %v, overrides %v", o.Namespace, err, m)
				continue
			}
			for _, sh := range m.Shards {
				if !sh.Synchronous {
					t.Errorf("%s shard map: shard %s not synchronous with synchronousReplication", o.Namespace, sh.Name)
				}
			}
		}
	}
	if maps != 2 {
		t.Errorf("%d shard maps, want one per app namespace (2)", maps)
	}
	const syncNames = "synchronous_standby_names = 'FIRST 1 (*)'"
	if conf := find[*corev1.ConfigMap](t, big, "ConfigMap", "brownie-postgres-config").Data["postgresql.conf"]; !strings.Contains(conf, syncNames) {
		t.Errorf("three shards with synchronousReplication: postgresql.conf lacks %s", syncNames)
	}
	if conf := find[*corev1.ConfigMap](t, objs, "ConfigMap", "brownie-postgres-config").Data["postgresql.conf"]; strings.Contains(conf, syncNames) {
		t.Errorf("chart defaults: postgresql.conf has %s", syncNames)
	}
	inj := find[*appsv1.Deployment](t, big, "Deployment", "brownie-sidecar-injector")
	if envValue(inj.Spec.Template.Spec.Containers[0], "INJECT_CERT_MODE") != "secret" {
		t.Errorf("three shards: injector cert mode")
	}
}

func TestWrongValuesFailTheChartSchema(t *testing.T) {
	for name, values := range map[string]map[string]any{
		"pool mode":        {"sidecar": map[string]any{"poolMode": "statement"}},
		"pool size":        {"sidecar": map[string]any{"poolSize": 0}},
		"pool size string": {"sidecar": map[string]any{"poolSize": "20"}},
		"shard count":      {"shards": map[string]any{"count": 0}},
		"replicas":         {"shards": map[string]any{"replicasPerShard": -1}},
		"sync, no replica": {"shards": map[string]any{"replicasPerShard": 0, "synchronousReplication": true}},
		"unknown key":      {"shards": map[string]any{"cont": 3}},
		"image tag":        {"image": map[string]any{"tag": "has space"}},
		"vault address":    {"vault": map[string]any{"address": "vault:8200"}},
		"memory":           {"sidecar": map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": "lots"}}}},
		"override shard":   {"shards": map[string]any{"overrides": map[string]any{"team": "primary"}}},
		"top-level typo":   {"sidecars": map[string]any{}},
	} {
		_, err := render(t, values)
		if err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("%s: rendered without a schema error (%v)", name, err)
		}
	}
}

func TestVaultFilesMatchTheChartValues(t *testing.T) {
	var values struct {
		Namespaces struct {
			Apps []string `json:"apps"`
		} `json:"namespaces"`
		Vault struct {
			PKIMount string `json:"pkiMount"`
			PKIRole  string `json:"pkiRole"`
			Audience string `json:"audience"`
		} `json:"vault"`
		Database struct {
			User string `json:"user"`
		} `json:"database"`
	}
	data, err := os.ReadFile(filepath.Join(gen.ChartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	policy, err := os.ReadFile("vault/brownie-sidecar-policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"sign", "issue"} {
		if p := fmt.Sprintf("path %q", values.Vault.PKIMount+"/"+op+"/"+values.Vault.PKIRole); !strings.Contains(string(policy), p) {
			t.Errorf("policy lacks %s", p)
		}
	}
	var role struct {
		Namespaces []string `json:"bound_service_account_namespaces"`
		Audience   string   `json:"audience"`
		Policies   []string `json:"token_policies"`
	}
	var pki struct {
		AllowedDomains []string `json:"allowed_domains"`
		ClientFlag     bool     `json:"client_flag"`
		ServerFlag     bool     `json:"server_flag"`
	}
	for file, v := range map[string]any{"vault/kubernetes-role.json": &role, "vault/pki-role.json": &pki} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	if role.Audience != values.Vault.Audience || !slices.Equal(role.Namespaces, values.Namespaces.Apps) || !slices.Contains(role.Policies, "brownie-sidecar") {
		t.Errorf("kubernetes role %+v does not match the chart's audience %q and app namespaces %v", role, values.Vault.Audience, values.Namespaces.Apps)
	}
	if !slices.Equal(pki.AllowedDomains, []string{values.Database.User}) || !pki.ClientFlag || pki.ServerFlag {
		t.Errorf("PKI role %+v: want client certificates for %q only", pki, values.Database.User)
	}
}
