package vaulttest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/brownie/brownie-sidecar/internal/vaulttest"
	bstls "github.com/brownie/brownie-sidecar/tls"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// call sends one raw HTTP request, as any Vault client would, and decodes the
// JSON response.
func call(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: decode: %v", method, url, err)
	}
	return resp.StatusCode, out
}

func newCA(t *testing.T) *bstls.CA {
	t.Helper()
	ca, err := bstls.NewCA("vaulttest CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func csrPEM(t *testing.T, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestSignReturnsVaultsResponseShapeWithARealCertificateOfTheRequestedTTL(t *testing.T) {
	ca := newCA(t)
	v := vaulttest.Start(t, vaulttest.Config{CACert: ca.Cert, CAKey: ca.Key, MaxTTL: time.Minute})
	tok := v.CreateToken(vaulttest.TokenOptions{})

	code, resp := call(t, http.MethodPut, v.URL()+"/v1/pki/sign/brownie", tok,
		map[string]any{"csr": csrPEM(t, "svc"), "common_name": "svc", "ttl": "20s", "format": "pem"})
	if code != 200 {
		t.Fatalf("status %d: %v", code, resp)
	}
	for _, k := range []string{"request_id", "lease_id", "renewable", "lease_duration", "data", "warnings", "auth"} {
		if _, ok := resp[k]; !ok {
			t.Errorf("response lacks %q", k)
		}
	}
	data := resp["data"].(map[string]any)
	if _, ok := data["private_key"]; ok {
		t.Error("sign response carries a private key")
	}
	block, _ := pem.Decode([]byte(data["certificate"].(string)))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatalf("not signed by the CA: %v", err)
	}
	if got := time.Until(cert.NotAfter); got < 15*time.Second || got > 21*time.Second {
		t.Errorf("lifetime left %s, want about 20s", got)
	}
	if cert.Subject.CommonName != "svc" || data["issuing_ca"] != strings.TrimSpace(string(ca.CertPEM)) {
		t.Errorf("CN %q, issuing_ca mismatch %v", cert.Subject.CommonName, data["issuing_ca"] != strings.TrimSpace(string(ca.CertPEM)))
	}
	if chain := data["ca_chain"].([]any); len(chain) != 1 {
		t.Errorf("ca_chain %v", chain)
	}
	issued := v.Issued()
	if len(issued) != 1 || issued[0].SerialColons != data["serial_number"] || issued[0].Serial.Cmp(cert.SerialNumber) != 0 {
		t.Errorf("issued %+v, serial_number %v", issued, data["serial_number"])
	}
	if exp, _ := data["expiration"].(float64); int64(exp) != cert.NotAfter.Unix() {
		t.Errorf("expiration %v, NotAfter %v", data["expiration"], cert.NotAfter.Unix())
	}
	if len(v.Violations()) != 0 {
		t.Errorf("violations for a clean request: %v", v.Violations())
	}

	// Above the role's max_ttl the TTL is capped with a warning.
	code, resp = call(t, http.MethodPost, v.URL()+"/v1/pki/sign/brownie", tok,
		map[string]any{"csr": csrPEM(t, "svc"), "ttl": 3600})
	if code != 200 || resp["warnings"] == nil {
		t.Fatalf("status %d, warnings %v", code, resp["warnings"])
	}
}

func TestASignRequestCarryingAPrivateKeyIsRecordedAsAViolation(t *testing.T) {
	ca := newCA(t)
	v := vaulttest.Start(t, vaulttest.Config{CACert: ca.Cert, CAKey: ca.Key})
	tok := v.CreateToken(vaulttest.TokenOptions{})
	_, key, err := ca.Issue(bstls.LeafOptions{CommonName: "svc", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	code, _ := call(t, http.MethodPut, v.URL()+"/v1/pki/sign/brownie", tok,
		map[string]any{"csr": csrPEM(t, "svc"), "private_key": string(key)})
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	if got := v.Violations(); len(got) != 2 {
		t.Fatalf("violations %q, want the PEM key and the unexpected field", got)
	}
}

func TestErrorsUseVaultsBodiesAndStatusCodes(t *testing.T) {
	ca := newCA(t)
	v := vaulttest.Start(t, vaulttest.Config{CACert: ca.Cert, CAKey: ca.Key, KubernetesJWTs: []string{"jwt-1"}, AppRoleRoleID: "rid",
		AppRoleSecretIDs: []string{"sid"}})
	tok := v.CreateToken(vaulttest.TokenOptions{})
	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		code                      int
		msg                       string
	}{
		{"no token", "PUT", "/v1/pki/sign/brownie", "", map[string]any{"csr": csrPEM(t, "a")}, 403, "permission denied"},
		{"bad token", "PUT", "/v1/pki/sign/brownie", "hvs.nope", map[string]any{"csr": csrPEM(t, "a")}, 403, "permission denied"},
		{"unknown role", "PUT", "/v1/pki/sign/other", tok, map[string]any{"csr": csrPEM(t, "a")}, 400, "unknown role: other"},
		{"no csr", "PUT", "/v1/pki/sign/brownie", tok, map[string]any{"common_name": "a"}, 400, `"csr" is empty`},
		{"no route", "GET", "/v1/nothing/here", tok, nil, 404, "no handler for route"},
		{"missing kv", "GET", "/v1/secret/data/missing", tok, nil, 404, ""},
		{"wrong jwt", "PUT", "/v1/auth/kubernetes/login", "", map[string]any{"role": "brownie-sidecar", "jwt": "x"}, 403, "permission denied"},
		{"wrong k8s role", "PUT", "/v1/auth/kubernetes/login", "", map[string]any{"role": "r", "jwt": "jwt-1"}, 400, `invalid role name "r"`},
		{"wrong secret id", "PUT", "/v1/auth/approle/login", "", map[string]any{"role_id": "rid", "secret_id": "x"}, 400, "invalid secret id"},
		{"non-renewable", "PUT", "/v1/auth/token/renew-self", tok, map[string]any{}, 400, "lease is not renewable"},
	} {
		code, resp := call(t, tc.method, v.URL()+tc.path, tc.token, tc.body)
		errs, ok := resp["errors"].([]any)
		if code != tc.code || !ok {
			t.Errorf("%s: status %d body %v, want %d with errors", tc.name, code, resp, tc.code)
			continue
		}
		if tc.msg == "" && len(errs) != 0 || tc.msg != "" && (len(errs) != 1 || !strings.Contains(errs[0].(string), tc.msg)) {
			t.Errorf("%s: errors %v, want %q", tc.name, errs, tc.msg)
		}
	}

	v.SetSealed(true)
	if code, resp := call(t, "GET", v.URL()+"/v1/auth/token/lookup-self", tok, nil); code != 503 ||
		resp["errors"].([]any)[0] != "Vault is sealed" {
		t.Errorf("sealed: %d %v", code, resp)
	}
}

func TestLoginTokensExpireAndRenewalsStopAtTheMaxTTL(t *testing.T) {
	ca := newCA(t)
	v := vaulttest.Start(t, vaulttest.Config{CACert: ca.Cert, CAKey: ca.Key, AppRoleRoleID: "rid", LoginTTL: 2 * time.Second, LoginMaxTTL: 3 * time.Second})
	code, resp := call(t, "POST", v.URL()+"/v1/auth/approle/login", "", map[string]any{"role_id": "rid"})
	if code != 200 {
		t.Fatalf("login %d %v", code, resp)
	}
	auth := resp["auth"].(map[string]any)
	tok := auth["client_token"].(string)
	if auth["lease_duration"].(float64) != 2 || auth["renewable"] != true || resp["data"] != nil {
		t.Fatalf("auth block %v", auth)
	}
	code, resp = call(t, "GET", v.URL()+"/v1/auth/token/lookup-self", tok, nil)
	if code != 200 || resp["data"].(map[string]any)["ttl"].(float64) < 1 {
		t.Fatalf("lookup-self %d %v", code, resp)
	}
	code, resp = call(t, "PUT", v.URL()+"/v1/auth/token/renew-self", tok, map[string]any{"increment": 10})
	if code != 200 || resp["auth"].(map[string]any)["lease_duration"].(float64) > 3 || resp["warnings"] == nil {
		t.Fatalf("renewal past the max TTL: %d %v", code, resp)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _ = call(t, "GET", v.URL()+"/v1/auth/token/lookup-self", tok, nil)
		if code == 403 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token still accepted (%d) after its max TTL", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := v.Stats(); st.Logins["approle"] != 1 || st.Renewals != 1 || st.Denied == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestStopRefusesConnectionsAndRestartServesOnTheSameAddress(t *testing.T) {
	ca := newCA(t)
	v := vaulttest.Start(t, vaulttest.Config{CACert: ca.Cert, CAKey: ca.Key})
	tok := v.CreateToken(vaulttest.TokenOptions{})
	url := v.URL()
	v.PutKV("brownie-metadata/certs", map[string]any{"client_cert": "x"})
	v.Stop()
	_, err := (&http.Client{Timeout: 5 * time.Second}).Get(url + "/v1/secret/data/brownie-metadata/certs")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("while stopped: %v, want connection refused", err)
	}
	v.Restart()
	if v.URL() != url {
		t.Fatalf("URL changed from %s to %s", url, v.URL())
	}
	code, resp := call(t, "GET", url+"/v1/secret/data/brownie-metadata/certs", tok, nil)
	if code != 200 {
		t.Fatalf("after restart: %d %v", code, resp)
	}
	md := resp["data"].(map[string]any)["metadata"].(map[string]any)
	if md["version"].(float64) != 1 || resp["data"].(map[string]any)["data"].(map[string]any)["client_cert"] != "x" {
		t.Fatalf("KV v2 shape: %v", resp["data"])
	}
}
