package config_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// vaultDefaults is the Vault section of a configuration loaded from an empty
// environment.
var vaultDefaults = config.Vault{
	Timeout:        10 * time.Second,
	Mode:           config.VaultModeSign,
	PKIMount:       "pki",
	CertPath:       "secret/brownie-metadata/certs",
	KVPollInterval: time.Minute,
	RefreshBuffer:  5 * time.Minute,
	Auth:           config.VaultAuthToken,
	K8sMount:       "kubernetes",
	K8sTokenFile:   "/var/run/secrets/kubernetes.io/serviceaccount/token",
	AppRoleMount:   "approle",
}

func TestLoadMapsEachVaultVariableToItsField(t *testing.T) {
	got, err := config.Load(map[string]string{
		"ADMIN_ADDR":                   "127.0.0.1:8001",
		"VAULT_ENABLED":                "true",
		"VAULT_URL":                    "https://vault.internal:8200",
		"VAULT_TOKEN_FILE":             "/vault/token",
		"VAULT_NAMESPACE":              "brownie",
		"VAULT_CACERT":                 "/etc/vault/ca.pem",
		"VAULT_CLIENT_TIMEOUT":         "3s",
		"VAULT_MODE":                   "issue",
		"VAULT_PKI_MOUNT":              "pki_int",
		"VAULT_PKI_ROLE":               "brownie-db",
		"VAULT_CERT_TTL":               "20s",
		"VAULT_CERT_PATH":              "kv/brownie/certs",
		"VAULT_KV_POLL_INTERVAL":       "30s",
		"VAULT_REFRESH_BUFFER":         "1m",
		"VAULT_CA_FILE":                "/etc/pg/ca.crt",
		"VAULT_AUTH":                   "approle",
		"VAULT_K8S_ROLE":               "sidecar",
		"VAULT_K8S_MOUNT":              "k8s-prod",
		"VAULT_K8S_TOKEN_FILE":         "/var/run/token",
		"VAULT_APPROLE_ROLE_ID":        "role-1",
		"VAULT_APPROLE_SECRET_ID_FILE": "/vault/secret-id",
		"VAULT_APPROLE_MOUNT":          "approle-prod",
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := config.Vault{
		Enabled: true, URL: "https://vault.internal:8200", TokenFile: "/vault/token",
		Namespace: "brownie", CACert: "/etc/vault/ca.pem", Timeout: 3 * time.Second,
		Mode: config.VaultModeIssue, PKIMount: "pki_int", PKIRole: "brownie-db", CertTTL: 20 * time.Second,
		CertPath: "kv/brownie/certs", KVPollInterval: 30 * time.Second, RefreshBuffer: time.Minute,
		CAFile: "/etc/pg/ca.crt", Auth: config.VaultAuthAppRole,
		K8sRole: "sidecar", K8sMount: "k8s-prod", K8sTokenFile: "/var/run/token",
		AppRoleRoleID: "role-1", AppRoleSecretIDFile: "/vault/secret-id", AppRoleMount: "approle-prod",
	}
	if !reflect.DeepEqual(got.Vault, want) {
		t.Errorf("Vault:\n got %+v\nwant %+v", got.Vault, want)
	}
}

func TestVaultAddrIsAcceptedWhenVaultURLIsUnset(t *testing.T) {
	cfg, err := config.Load(map[string]string{
		"VAULT_ENABLED": "true", "VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "t", "VAULT_PKI_ROLE": "r",
		"ADMIN_ADDR": "127.0.0.1:8001",
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Vault.Address() != "http://127.0.0.1:8200" {
		t.Errorf("Address() = %q", cfg.Vault.Address())
	}
	cfg.Vault.URL = "https://vault:8200"
	if cfg.Vault.Address() != "https://vault:8200" {
		t.Errorf("VAULT_URL does not win over VAULT_ADDR: %q", cfg.Vault.Address())
	}
}

func TestAnEnabledVaultReportsEveryProblemAtOnce(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"VAULT_ENABLED": "true"}, []string{
			"VAULT_ENABLED requires VAULT_URL (or VAULT_ADDR)",
			"VAULT_MODE sign requires VAULT_PKI_ROLE",
			"VAULT_AUTH token requires VAULT_TOKEN or VAULT_TOKEN_FILE",
		}},
		{map[string]string{"VAULT_ENABLED": "true", "VAULT_URL": "vault:8200", "VAULT_MODE": "issue",
			"VAULT_AUTH": "approle", "VAULT_CERT_TTL": "500ms"}, []string{
			`VAULT_URL "vault:8200" is not an http:// or https:// URL`,
			"VAULT_MODE issue requires VAULT_PKI_ROLE",
			"VAULT_CERT_TTL must be at least 1s",
			"VAULT_AUTH approle requires VAULT_APPROLE_ROLE_ID",
		}},
		{map[string]string{"VAULT_ENABLED": "true", "VAULT_URL": "http://v", "VAULT_MODE": "kv",
			"VAULT_CERT_PATH": "nomount", "VAULT_AUTH": "kubernetes", "VAULT_REFRESH_BUFFER": "-1s"}, []string{
			`VAULT_CERT_PATH "nomount" is not <mount>/<path>`,
			"VAULT_AUTH kubernetes requires VAULT_K8S_ROLE",
			"VAULT_REFRESH_BUFFER must not be negative",
		}},
		{map[string]string{"VAULT_ENABLED": "true", "VAULT_URL": "http://v", "VAULT_MODE": "pull",
			"VAULT_AUTH": "ldap"}, []string{`VAULT_MODE "pull"`, `VAULT_AUTH "ldap"`}},
		{map[string]string{"VAULT_ENABLED": "true", "VAULT_URL": "http://v", "VAULT_PKI_ROLE": "r",
			"VAULT_TOKEN": "t", "VAULT_TOKEN_FILE": "/f"}, []string{"VAULT_TOKEN and VAULT_TOKEN_FILE are both set"}},
		{map[string]string{"VAULT_ENABLED": "maybe"}, []string{"VAULT_ENABLED"}},
	} {
		_, err := config.Load(tc.env)
		if err == nil {
			t.Errorf("Load(%v) accepted", tc.env)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Load(%v):\n%v\nlacks %q", tc.env, err, w)
			}
		}
	}
}

func TestADisabledVaultIgnoresTheOtherVaultVariables(t *testing.T) {
	if _, err := config.Load(map[string]string{"VAULT_MODE": "pull", "VAULT_AUTH": "ldap", "ADMIN_ADDR": "127.0.0.1:8001"}); err != nil {
		t.Errorf("Load: %v", err)
	}
}

func TestTheVaultTokenIsNeverPrinted(t *testing.T) {
	cfg, err := config.Load(map[string]string{
		"VAULT_ENABLED": "true", "VAULT_URL": "http://v", "VAULT_TOKEN": "hvs.sup3rs3cret", "VAULT_PKI_ROLE": "r",
		"ADMIN_ADDR": "127.0.0.1:8001",
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.Vault.Token) != "hvs.sup3rs3cret" {
		t.Fatalf("token %q", string(cfg.Vault.Token))
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(format, cfg); strings.Contains(out, "sup3rs3cret") {
			t.Errorf("%s prints the token: %s", format, out)
		}
	}
}
