package inject_test

import (
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/brownie/brownie-sidecar/inject"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/k8stest"
)

func newInjector(t *testing.T, env map[string]string) *inject.Injector {
	t.Helper()
	base := map[string]string{"INJECT_IMAGE": "registry.example.com/brownie/brownie-sidecar:1.2.3"}
	for k, v := range env {
		base[k] = v
	}
	cfg, err := config.LoadInject(base)
	if err != nil {
		t.Fatal(err)
	}
	in, err := inject.New(cfg, inject.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// review sends pod through the injector and returns the response and the
// pod with the patch applied, decoded strictly into corev1.Pod.
func review(t *testing.T, in *inject.Injector, pod *corev1.Pod) (*admissionv1.AdmissionResponse, *corev1.Pod) {
	t.Helper()
	body, err := k8stest.ReviewFor("3f1c7a0e-0000-4000-8000-000000000001", "brownie-apps", pod)
	if err != nil {
		t.Fatal(err)
	}
	out, err := in.Review(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := k8stest.Response(out)
	if err != nil {
		t.Fatal(err)
	}
	if resp.UID != "3f1c7a0e-0000-4000-8000-000000000001" {
		t.Fatalf("response uid %q", resp.UID)
	}
	if !resp.Allowed {
		return resp, nil
	}
	patched, err := k8stest.ApplyPatch(pod, resp)
	if err != nil {
		t.Fatal(err)
	}
	return resp, patched
}

func appPod(annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "brownie-apps", Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "api", Image: "brownie/api:1"}}},
	}
}

func injectOn() map[string]string { return map[string]string{inject.AnnotationInject: "true"} }

// sidecarOf checks the sidecar is in the pod exactly once, as a native
// sidecar, and returns it.
func sidecarOf(t *testing.T, p *corev1.Pod) corev1.Container {
	t.Helper()
	var found []corev1.Container
	for _, c := range p.Spec.InitContainers {
		if c.Name == inject.ContainerName {
			found = append(found, c)
		}
	}
	for _, c := range p.Spec.Containers {
		if c.Name == inject.ContainerName {
			t.Fatalf("sidecar among the app containers")
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d sidecars in %d init containers, want exactly 1", len(found), len(p.Spec.InitContainers))
	}
	c := found[0]
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("sidecar restartPolicy %v, want Always (native sidecar)", c.RestartPolicy)
	}
	return c
}

func envOf(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
		if e.ValueFrom != nil {
			m[e.Name] = "<from>"
		}
	}
	return m
}

func volumeNames(p *corev1.Pod) map[string]corev1.Volume {
	m := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		m[v.Name] = v
	}
	return m
}

func TestAnnotatedPodWithoutInitContainersOrVolumesGetsANativeSidecar(t *testing.T) {
	in := newInjector(t, nil)
	resp, p := review(t, in, appPod(injectOn()))
	if !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("allowed %v patch %q", resp.Allowed, resp.Patch)
	}
	c := sidecarOf(t, p)
	if c.Image != "registry.example.com/brownie/brownie-sidecar:1.2.3" || len(c.Args) != 1 || c.Args[0] != "run" {
		t.Errorf("image %q args %v", c.Image, c.Args)
	}
	for name, pr := range map[string]*corev1.Probe{"/startup": c.StartupProbe, "/ready": c.ReadinessProbe, "/health": c.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != name || pr.HTTPGet.Port.IntValue() != 8001 {
			t.Errorf("probe %s: %+v, want GET %s on the admin port 8001", name, pr, name)
		}
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 8001 {
		t.Errorf("ports %+v", c.Ports)
	}
	env := envOf(c)
	for k, v := range map[string]string{
		"LISTEN_ADDR": "127.0.0.1:5432", "LISTEN_SOCKET_DIR": inject.SocketDir, "ADMIN_ADDR": ":8001",
		"ADMIN_TOKEN": "<from>", "SHARD_MAP_FILE": "/etc/brownie/shardmap/brownie.yaml",
		"VAULT_ENABLED": "true", "VAULT_AUTH": "kubernetes", "VAULT_K8S_ROLE": "brownie-sidecar",
		"VAULT_K8S_TOKEN_FILE": inject.VaultTokenDir + "/token", "GOMEMLIMIT": "<from>",
	} {
		if env[k] != v {
			t.Errorf("sidecar env %s = %q, want %q", k, env[k], v)
		}
	}
	if _, ok := env["POOL_MODE"]; ok {
		t.Errorf("POOL_MODE set without its annotation: the ConfigMap's value must apply")
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "brownie-sidecar-config" {
		t.Errorf("envFrom %+v", c.EnvFrom)
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("security context %+v", sc)
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		t.Errorf("preStop hook set")
	}
	if q := c.Resources.Requests[corev1.ResourceMemory]; q.Cmp(resource.MustParse("64Mi")) != 0 {
		t.Errorf("memory request %v", q.String())
	}
	if q := c.Resources.Limits[corev1.ResourceMemory]; q.Cmp(resource.MustParse("256Mi")) != 0 {
		t.Errorf("memory limit %v", q.String())
	}
	vols := volumeNames(p)
	if v, ok := vols[inject.VolumeSocket]; !ok || v.EmptyDir == nil {
		t.Errorf("socket volume %+v", v)
	}
	if v, ok := vols[inject.VolumeShardMap]; !ok || v.ConfigMap == nil || v.ConfigMap.Name != "brownie-shard-map" {
		t.Errorf("shard map volume %+v", v)
	}
	if v, ok := vols[inject.VolumeVault]; !ok || v.Projected == nil || len(v.Projected.Sources) != 1 ||
		v.Projected.Sources[0].ServiceAccountToken == nil || v.Projected.Sources[0].ServiceAccountToken.Audience != "vault" {
		t.Errorf("vault token volume %+v", v)
	}
	app := p.Spec.Containers[0]
	if len(app.VolumeMounts) != 1 || app.VolumeMounts[0].MountPath != inject.SocketDir {
		t.Errorf("app mounts %+v", app.VolumeMounts)
	}
	if e := envOf(app); e[inject.AppEnvAddr] != "127.0.0.1:5432" || e[inject.AppEnvSocketDir] != inject.SocketDir {
		t.Errorf("app env %v", e)
	}
	if p.Labels[inject.LabelInjected] != "true" || p.Annotations[inject.AnnotationStatus] != "injected" {
		t.Errorf("labels %v annotations %v", p.Labels, p.Annotations)
	}
}

func TestPodWithInitContainersVolumesAndSeveralContainersKeepsThemAll(t *testing.T) {
	in := newInjector(t, nil)
	pod := appPod(injectOn())
	pod.Labels = map[string]string{"app": "api"}
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "brownie/api:1",
		VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}}
	pod.Spec.Containers = append(pod.Spec.Containers,
		corev1.Container{Name: "agent", Image: "brownie/agent:1",
			Env: []corev1.EnvVar{{Name: "X", Value: "1"}, {Name: inject.AppEnvAddr, Value: "127.0.0.1:6432"}}},
		corev1.Container{Name: "worker", Image: "brownie/worker:1"})
	pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	_, p := review(t, in, pod)
	sidecarOf(t, p)
	if len(p.Spec.InitContainers) != 2 || p.Spec.InitContainers[0].Name != inject.ContainerName || p.Spec.InitContainers[1].Name != "migrate" {
		t.Fatalf("init containers %v, want the sidecar first, then migrate", names(p.Spec.InitContainers))
	}
	if got := names(p.Spec.Containers); strings.Join(got, ",") != "api,agent,worker" {
		t.Fatalf("containers %v", got)
	}
	if _, ok := volumeNames(p)["data"]; !ok || len(p.Spec.Volumes) != 5 {
		t.Fatalf("volumes %d %v", len(p.Spec.Volumes), volumeNames(p))
	}
	migrate := p.Spec.InitContainers[1]
	if len(migrate.VolumeMounts) != 2 || migrate.VolumeMounts[1].Name != inject.VolumeSocket {
		t.Errorf("migrate mounts %+v", migrate.VolumeMounts)
	}
	agent := p.Spec.Containers[1]
	if e := envOf(agent); e[inject.AppEnvAddr] != "127.0.0.1:6432" || e["X"] != "1" || e[inject.AppEnvSocketDir] != inject.SocketDir || len(agent.Env) != 3 {
		t.Errorf("agent env %+v: its own value must win and nothing be duplicated", agent.Env)
	}
	for _, c := range p.Spec.Containers {
		if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].Name != inject.VolumeSocket {
			t.Errorf("%s mounts %+v", c.Name, c.VolumeMounts)
		}
	}
	if p.Labels["app"] != "api" || p.Labels[inject.LabelInjected] != "true" {
		t.Errorf("labels %v", p.Labels)
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestReviewingAnInjectedPodAgainChangesNothing(t *testing.T) {
	in := newInjector(t, nil)
	_, once := review(t, in, appPod(injectOn()))
	resp, twice := review(t, in, once)
	if !resp.Allowed || len(resp.Patch) != 0 {
		t.Fatalf("second review: allowed %v patch %s", resp.Allowed, resp.Patch)
	}
	sidecarOf(t, twice)
}

func TestPodsNotOptedInAreUntouched(t *testing.T) {
	in := newInjector(t, nil)
	for _, ann := range []map[string]string{nil, {inject.AnnotationInject: "false"}, {"other": "x"}} {
		resp, p := review(t, in, appPod(ann))
		if !resp.Allowed || len(resp.Patch) != 0 || len(p.Spec.InitContainers) != 0 {
			t.Errorf("annotations %v: allowed %v patch %s", ann, resp.Allowed, resp.Patch)
		}
	}
}

func TestBadAnnotationsAreDeniedNamingTheAnnotation(t *testing.T) {
	in := newInjector(t, nil)
	for _, tc := range []struct{ key, value, why string }{
		{inject.AnnotationInject, "yes", `not "true" or "false"`},
		{inject.AnnotationPoolMode, "statement", "not one of session, transaction"},
		{inject.AnnotationPoolSize, "0", "whole number between 1 and 10000"},
		{inject.AnnotationPoolSize, "lots", "whole number"},
		{inject.AnnotationVaultRole, "bad role", "not a Vault role name"},
		{inject.AnnotationShardMap, "Shard_Map", "not a Kubernetes object name"},
		{inject.AnnotationCertSecret, "client-tls", "needs the injector's Secret mode"},
		{inject.AnnotationImage, "Not An Image", "not an image reference"},
		{inject.AnnotationCPURequest, "lots", "not a resource quantity"},
		{inject.AnnotationMemoryLimit, "32Mi", "above the limit"},
		{"brownie.ai/pool-sise", "10", "not a known annotation"},
	} {
		ann := injectOn()
		ann[tc.key] = tc.value
		resp, _ := review(t, in, appPod(ann))
		if resp.Allowed || resp.Result == nil {
			t.Errorf("%s=%q allowed", tc.key, tc.value)
			continue
		}
		msg := resp.Result.Message
		if !strings.Contains(msg, tc.key) || !strings.Contains(msg, tc.why) || resp.Result.Code != 400 {
			t.Errorf("%s=%q: code %d message %q, want the annotation and %q", tc.key, tc.value, resp.Result.Code, msg, tc.why)
		}
	}
}

func TestPodWithAContainerNamedLikeTheSidecarIsRefused(t *testing.T) {
	in := newInjector(t, nil)
	own := appPod(injectOn())
	own.Spec.Containers = append(own.Spec.Containers, corev1.Container{Name: inject.ContainerName, Image: "x"})
	init := appPod(injectOn())
	init.Spec.InitContainers = []corev1.Container{{Name: inject.ContainerName, Image: "x"}}
	vol := appPod(injectOn())
	vol.Spec.Volumes = []corev1.Volume{{Name: inject.VolumeSocket, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	for name, pod := range map[string]*corev1.Pod{"container": own, "init container": init, "volume": vol} {
		resp, _ := review(t, in, pod)
		if resp.Allowed || resp.Result == nil || resp.Result.Code != 409 || !strings.Contains(resp.Result.Message, "brownie-") {
			t.Errorf("%s: allowed %v result %+v", name, resp.Allowed, resp.Result)
		}
	}
}

func TestAnnotationsOverrideTheDefaults(t *testing.T) {
	in := newInjector(t, nil)
	ann := injectOn()
	ann[inject.AnnotationPoolMode] = "transaction"
	ann[inject.AnnotationPoolSize] = "40"
	ann[inject.AnnotationVaultRole] = "brownie-agents"
	ann[inject.AnnotationShardMap] = "brownie-shard-map-canary"
	ann[inject.AnnotationImage] = "registry.example.com/brownie/brownie-sidecar@sha256:" + strings.Repeat("ab", 32)
	ann[inject.AnnotationCPURequest] = "200m"
	ann[inject.AnnotationCPULimit] = "1"
	ann[inject.AnnotationMemoryRequest] = "128Mi"
	ann[inject.AnnotationMemoryLimit] = "512Mi"
	_, p := review(t, in, appPod(ann))
	c := sidecarOf(t, p)
	env := envOf(c)
	if env["POOL_MODE"] != "transaction" || env["POOL_SIZE"] != "40" || env["VAULT_K8S_ROLE"] != "brownie-agents" {
		t.Errorf("env %v", env)
	}
	if c.Image != ann[inject.AnnotationImage] {
		t.Errorf("image %q", c.Image)
	}
	if volumeNames(p)[inject.VolumeShardMap].ConfigMap.Name != "brownie-shard-map-canary" {
		t.Errorf("shard map volume %+v", volumeNames(p)[inject.VolumeShardMap])
	}
	for res, want := range map[string]string{"requests.cpu": "200m", "limits.cpu": "1", "requests.memory": "128Mi", "limits.memory": "512Mi"} {
		list := c.Resources.Requests
		if strings.HasPrefix(res, "limits") {
			list = c.Resources.Limits
		}
		q := list[corev1.ResourceName(strings.SplitN(res, ".", 2)[1])]
		if q.Cmp(resource.MustParse(want)) != 0 {
			t.Errorf("%s = %s, want %s", res, q.String(), want)
		}
	}
}

func TestSecretModeMountsTheClientCertificateSecret(t *testing.T) {
	in := newInjector(t, map[string]string{"INJECT_CERT_MODE": "secret", "INJECT_SHARD_MAP": "off"})
	ann := injectOn()
	ann[inject.AnnotationCertSecret] = "api-client-tls"
	_, p := review(t, in, appPod(ann))
	c := sidecarOf(t, p)
	env := envOf(c)
	if env["LOCAL_CERT_DIR"] != inject.CertDir || env["VAULT_ENABLED"] != "false" {
		t.Errorf("env %v", env)
	}
	if _, ok := env["SHARD_MAP_FILE"]; ok {
		t.Errorf("SHARD_MAP_FILE set with INJECT_SHARD_MAP=off")
	}
	v := volumeNames(p)[inject.VolumeCerts]
	if v.Secret == nil || v.Secret.SecretName != "api-client-tls" || len(v.Secret.Items) != 3 {
		t.Fatalf("certificate volume %+v", v)
	}
	if _, ok := volumeNames(p)[inject.VolumeVault]; ok {
		t.Errorf("vault token volume in secret mode")
	}
	ann = injectOn()
	ann[inject.AnnotationVaultRole] = "x"
	if resp, _ := review(t, in, appPod(ann)); resp.Allowed {
		t.Errorf("vault-role accepted in secret mode")
	}
}

func TestOtherKindsAndOperationsAreAllowedUnchanged(t *testing.T) {
	in := newInjector(t, nil)
	for _, body := range []string{
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","object":{}}}`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"UPDATE","object":{"metadata":{"annotations":{"brownie.ai/inject":"true"}},"spec":{"containers":[]}}}}`,
	} {
		out, err := in.Review([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := k8stest.Response(out)
		if err != nil {
			t.Fatal(err)
		}
		if !resp.Allowed || len(resp.Patch) != 0 || resp.UID != "u1" {
			t.Errorf("response %+v", resp)
		}
	}
	for _, bad := range []string{`{`, `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`} {
		if _, err := in.Review([]byte(bad)); err == nil {
			t.Errorf("Review(%s) accepted", bad)
		}
	}
}

func TestBadInjectorDefaultsNameTheirVariables(t *testing.T) {
	cfg, err := config.LoadInject(map[string]string{"INJECT_IMAGE": "brownie/brownie-sidecar:1",
		"INJECT_MEMORY_REQUEST": "1Gi", "INJECT_CPU_LIMIT": "lots"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = inject.New(cfg, inject.Deps{})
	if err == nil || !strings.Contains(err.Error(), "INJECT_CPU_LIMIT") {
		t.Fatalf("New: %v", err)
	}
	cfg.CPULimit = ""
	if _, err = inject.New(cfg, inject.Deps{}); err == nil || !strings.Contains(err.Error(), "INJECT_MEMORY_REQUEST") {
		t.Fatalf("New with a request above the limit: %v", err)
	}
	_, err = config.LoadInject(map[string]string{"INJECT_CERT_MODE": "files"})
	if err == nil || !strings.Contains(err.Error(), "INJECT_IMAGE") || !strings.Contains(err.Error(), "INJECT_CERT_MODE") {
		t.Fatalf("LoadInject: %v", err)
	}
}
