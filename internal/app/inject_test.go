package app

import (
	"bytes"
	"context"
	cryptotls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/brownie/brownie-sidecar/inject"
	"github.com/brownie/brownie-sidecar/internal/k8stest"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// injector is the real `inject` command run in-process.
type injector struct {
	url, admin string
	client     *http.Client
	logs       *lockedBuffer
}

// writeServingCert issues a webhook serving certificate for 127.0.0.1 and
// writes it as a Kubernetes TLS Secret mounts it; it returns the serial.
func writeServingCert(t *testing.T, ca *brownietls.CA, dir string) string {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(brownietls.LeafOptions{CommonName: "brownie-sidecar-injector.brownie-system.svc",
		DNSNames: []string{"brownie-sidecar-injector.brownie-system.svc"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Server: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := brownietls.WriteFileAtomic(filepath.Join(dir, "tls.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := brownietls.WriteFileAtomic(filepath.Join(dir, "tls.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Text(16)
}

func startInjector(t *testing.T, ca *brownietls.CA, tlsDir string) *injector {
	t.Helper()
	env := map[string]string{
		"INJECT_LISTEN_ADDR": "127.0.0.1:0", "INJECT_ADMIN_ADDR": "127.0.0.1:0", "INJECT_TLS_DIR": tlsDir,
		"INJECT_IMAGE": "registry.example.com/brownie/brownie-sidecar:1.2.3", "INJECT_SHUTDOWN_TIMEOUT": "2s",
		"LOG_LEVEL": "debug",
	}
	logs := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan InjectStarted, 1)
	done := make(chan int, 1)
	go func() {
		done <- runInject(ctx, nil, env, IO{Stdout: io.Discard, Stderr: logs}, func(s InjectStarted) { started <- s })
	}()
	var st InjectStarted
	select {
	case st = <-started:
	case code := <-done:
		cancel()
		t.Fatalf("inject exited with %d:\n%s", code, logs.String())
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("inject did not start")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != ExitOK {
				t.Errorf("inject exit code %d:\n%s", code, logs.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("inject did not stop")
		}
	})
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	tr := &http.Transport{TLSClientConfig: &cryptotls.Config{RootCAs: roots}, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &injector{url: "https://" + st.Addr.String(), admin: "http://" + st.AdminAddr.String(),
		client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, logs: logs}
}

func (in *injector) post(t *testing.T, contentType string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := in.client.Post(in.url+inject.Path, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// servingSerial returns the serial of the certificate the webhook presents.
func (in *injector) servingSerial(t *testing.T) string {
	t.Helper()
	tr := in.client.Transport.(*http.Transport)
	conn, err := cryptotls.Dial("tcp", strings.TrimPrefix(in.url, "https://"), tr.TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

func TestInjectCommandServesAdmissionReviewsOverTLS(t *testing.T) {
	ca, err := brownietls.NewCA("injector test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := t.TempDir()
	serial := writeServingCert(t, ca, tlsDir)
	in := startInjector(t, ca, tlsDir)
	if got := in.servingSerial(t); got != serial {
		t.Fatalf("serving serial %s, want %s", got, serial)
	}

	mkPod := func(name string, ann map[string]string, containers ...string) *corev1.Pod {
		p := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "brownie-apps", Annotations: ann}}
		for _, c := range containers {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "brownie/" + c + ":1"})
		}
		return p
	}
	on := func(extra ...string) map[string]string {
		m := map[string]string{inject.AnnotationInject: "true"}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}
	send := func(pod *corev1.Pod) (allowed bool, patched *corev1.Pod, msg string) {
		t.Helper()
		body, err := k8stest.ReviewFor("uid-"+pod.Name, "brownie-apps", pod)
		if err != nil {
			t.Fatal(err)
		}
		code, out := in.post(t, "application/json", body)
		if code != http.StatusOK {
			t.Fatalf("%s: HTTP %d %s", pod.Name, code, out)
		}
		resp, err := k8stest.Response(out)
		if err != nil {
			t.Fatal(err)
		}
		if string(resp.UID) != "uid-"+pod.Name {
			t.Fatalf("uid %q", resp.UID)
		}
		if !resp.Allowed {
			return false, nil, resp.Result.Message
		}
		p, err := k8stest.ApplyPatch(pod, resp)
		if err != nil {
			t.Fatal(err)
		}
		return true, p, ""
	}
	countSidecars := func(p *corev1.Pod) int {
		n := 0
		for _, c := range p.Spec.InitContainers {
			if c.Name != inject.ContainerName {
				continue
			}
			n++
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("%s: sidecar restartPolicy %v", p.Name, c.RestartPolicy)
			}
			for _, pr := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
				if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.IntValue() != int(c.Ports[0].ContainerPort) || c.Ports[0].Name != "brownie-admin" {
					t.Errorf("%s: probe %+v not on the admin port %+v", p.Name, pr, c.Ports)
				}
			}
		}
		return n
	}

	ok, injected, _ := send(mkPod("annotated", on(), "api"))
	if !ok || countSidecars(injected) != 1 {
		t.Fatalf("annotated pod: allowed %v", ok)
	}
	ok, multi, _ := send(mkPod("multi", on(inject.AnnotationPoolMode, "transaction"), "api", "agent", "worker"))
	if !ok || countSidecars(multi) != 1 || len(multi.Spec.Containers) != 3 {
		t.Fatalf("multi-container pod: allowed %v", ok)
	}
	for _, c := range multi.Spec.Containers {
		if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != inject.SocketDir {
			t.Errorf("multi: container %s mounts %+v", c.Name, c.VolumeMounts)
		}
	}
	ok, plain, _ := send(mkPod("unannotated", nil, "api"))
	if !ok || countSidecars(plain) != 0 || len(plain.Spec.Volumes) != 0 || plain.Labels != nil {
		t.Fatalf("unannotated pod changed: %+v", plain.Spec)
	}
	injected.Name = "again"
	ok, again, _ := send(injected)
	if !ok || countSidecars(again) != 1 || len(again.Spec.Volumes) != len(injected.Spec.Volumes) {
		t.Fatalf("already injected pod: allowed %v, sidecars %d", ok, countSidecars(again))
	}
	ok, _, msg := send(mkPod("bad", on(inject.AnnotationPoolSize, "-3"), "api"))
	if ok || !strings.Contains(msg, inject.AnnotationPoolSize) || !strings.Contains(msg, `"-3"`) {
		t.Fatalf("bad annotation: allowed %v message %q", ok, msg)
	}
	clash := mkPod("clash", on(), "api", inject.ContainerName)
	if ok, _, msg := send(clash); ok || !strings.Contains(msg, "already has a container named brownie-sidecar") {
		t.Fatalf("container named like the sidecar: allowed %v message %q", ok, msg)
	}

	if code, _ := in.post(t, "text/plain", []byte("{}")); code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: HTTP %d", code)
	}
	if code, out := in.post(t, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1beta1"}`)); code != http.StatusBadRequest {
		t.Errorf("v1beta1 review: HTTP %d %s", code, out)
	}

	// The renewed certificate (cert-manager rewrites the Secret) is
	// presented from the next handshake on, without a restart.
	newSerial := writeServingCert(t, ca, tlsDir)
	waitFor(t, 10*time.Second, "the renewed serving certificate", func() bool { return in.servingSerial(t) == newSerial })
	if ok, _, _ := send(mkPod("after-rotation", on(), "api")); !ok {
		t.Fatal("review after rotation refused")
	}

	resp, err := http.Get(in.admin + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/ready %d", resp.StatusCode)
	}
	metrics := httpGetBody(t, in.admin+"/metrics")
	for _, want := range []string{
		`brownie_sidecar_injector_reviews_total{result="injected"} 3`,
		`brownie_sidecar_injector_reviews_total{result="denied"} 2`,
		`brownie_sidecar_injector_reviews_total{result="skipped"} 1`,
		`brownie_sidecar_injector_reviews_total{result="already_injected"} 1`,
		`brownie_sidecar_certificate_rotations_total{source="file"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestInjectCommandRefusesABadConfiguration(t *testing.T) {
	var stderr bytes.Buffer
	code := Main(context.Background(), []string{"brownie-sidecar", "inject"},
		map[string]string{"INJECT_CERT_MODE": "files", "INJECT_TLS_DIR": t.TempDir()}, IO{Stdout: io.Discard, Stderr: &stderr})
	if code != ExitConfig || !strings.Contains(stderr.String(), "INJECT_IMAGE") || !strings.Contains(stderr.String(), "INJECT_CERT_MODE") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	code = Main(context.Background(), []string{"brownie-sidecar", "inject"},
		map[string]string{"INJECT_IMAGE": "brownie/brownie-sidecar:1", "INJECT_TLS_DIR": t.TempDir(),
			"INJECT_LISTEN_ADDR": "127.0.0.1:0", "INJECT_ADMIN_ADDR": "off"}, IO{Stdout: io.Discard, Stderr: &stderr})
	if code != ExitFail || !strings.Contains(stderr.String(), "tls.crt") {
		t.Fatalf("missing certificate: exit %d: %s", code, stderr.String())
	}
}

func httpGetBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}
