// Package k8stest decodes Kubernetes objects strictly with the real
// k8s.io/api types, for the tests of the injector and of the manifests
// under deploy/. It is imported by tests only, so the k8s.io modules never
// reach the sidecar binary.
//
// Strict means: case-sensitive field names, no unknown field, no
// duplicate field, as the API server's own strict field validation.
package k8stest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// DecodeJSON decodes data into v strictly.
func DecodeJSON(data []byte, v any) error {
	strict, err := sigsjson.UnmarshalStrict(data, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// DecodeYAML decodes one YAML document into v strictly (duplicate keys
// are refused as well).
func DecodeYAML(doc []byte, v any) error {
	data, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	return DecodeJSON(data, v)
}

// CertManagerObject is what the manifests use of cert-manager.io/v1
// Certificate and Issuer: their documented fields, so a misspelt one fails
// strict decoding.
type CertManagerObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		// Certificate
		SecretName  string   `json:"secretName,omitempty"`
		CommonName  string   `json:"commonName,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		IPAddresses []string `json:"ipAddresses,omitempty"`
		IsCA        bool     `json:"isCA,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef *struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef,omitempty"`
		// Issuer
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

// newObject returns an empty object of the type of apiVersion and kind.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, true
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1 Secret":
		return &corev1.Secret{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1 Pod":
		return &corev1.Pod{}, true
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "batch/v1 Job":
		return &batchv1.Job{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return &rbacv1.ClusterRole{}, true
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, true
	case "rbac.authorization.k8s.io/v1 Role":
		return &rbacv1.Role{}, true
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		return &rbacv1.RoleBinding{}, true
	case "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration":
		return &admissionregistrationv1.MutatingWebhookConfiguration{}, true
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	case "monitoring.coreos.com/v1 PodMonitor":
		return &monitoringv1.PodMonitor{}, true
	case "monitoring.coreos.com/v1 PrometheusRule":
		return &monitoringv1.PrometheusRule{}, true
	case "cert-manager.io/v1 Certificate", "cert-manager.io/v1 Issuer":
		return &CertManagerObject{}, true
	}
	return nil, false
}

// Object is one decoded manifest.
type Object struct {
	APIVersion, Kind, Name, Namespace string
	// Value is a pointer to the typed object (*appsv1.Deployment…).
	Value any
}

// DecodeManifests splits a multi-document YAML stream and decodes every
// non-empty document strictly into its Kubernetes type. A document of a
// type the package does not know is an error, so a new kind in the
// manifests needs a type here first.
func DecodeManifests(stream []byte) ([]Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var out []Object
	var errs []error
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return out, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var tm struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			errs = append(errs, fmt.Errorf("document %q: %w", firstLine(doc), err))
			continue
		}
		v, ok := newObject(tm.APIVersion, tm.Kind)
		if !ok {
			errs = append(errs, fmt.Errorf("%s %s %s: unknown type", tm.APIVersion, tm.Kind, tm.Metadata.Name))
			continue
		}
		if err := DecodeYAML(doc, v); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", tm.Kind, tm.Metadata.Name, err))
			continue
		}
		out = append(out, Object{APIVersion: tm.APIVersion, Kind: tm.Kind, Name: tm.Metadata.Name,
			Namespace: tm.Metadata.Namespace, Value: v})
	}
	return out, errors.Join(errs...)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// stripComments removes comment-only lines, so a document of comments
// counts as empty.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ReviewFor returns an admission.k8s.io/v1 AdmissionReview asking to
// create pod in namespace, as the API server sends it.
func ReviewFor(uid string, namespace string, pod *corev1.Pod) ([]byte, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	rv := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID(uid),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: namespace,
			Name:      pod.Name,
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	return json.Marshal(&rv)
}

// Response decodes an AdmissionReview answer strictly and returns its
// response.
func Response(body []byte) (*admissionv1.AdmissionResponse, error) {
	var rv admissionv1.AdmissionReview
	if err := DecodeJSON(body, &rv); err != nil {
		return nil, fmt.Errorf("admission review answer: %w", err)
	}
	if rv.APIVersion != "admission.k8s.io/v1" || rv.Kind != "AdmissionReview" || rv.Response == nil {
		return nil, fmt.Errorf("admission review answer %s %s without response", rv.APIVersion, rv.Kind)
	}
	return rv.Response, nil
}

// ApplyPatch applies the response's JSON patch (if any) to pod, as the API
// server does, and decodes the result strictly into a new Pod.
func ApplyPatch(pod *corev1.Pod, resp *admissionv1.AdmissionResponse) (*corev1.Pod, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	if len(resp.Patch) > 0 {
		if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			return nil, fmt.Errorf("patch type %v, want JSONPatch", resp.PatchType)
		}
		p, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			return nil, fmt.Errorf("decode patch: %w", err)
		}
		if raw, err = p.Apply(raw); err != nil {
			return nil, fmt.Errorf("apply patch %s: %w", resp.Patch, err)
		}
	}
	var out corev1.Pod
	if err := DecodeJSON(raw, &out); err != nil {
		return nil, fmt.Errorf("patched pod: %w", err)
	}
	return &out, nil
}
