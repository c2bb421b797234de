package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Vault certificate modes (VAULT_MODE).
const (
	VaultModeSign  = "sign"
	VaultModeIssue = "issue"
	VaultModeKV    = "kv"
)

// Vault authentication methods (VAULT_AUTH).
const (
	VaultAuthToken      = "token"
	VaultAuthKubernetes = "kubernetes"
	VaultAuthAppRole    = "approle"
)

// Secret is a configuration value that must not be printed. Its String
// method hides it, so a Config printed with %v or %+v shows "[redacted]".
type Secret string

// String returns "[redacted]" for a non-empty secret and "" otherwise.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString hides the value from %#v as well.
func (s Secret) GoString() string { return fmt.Sprintf("config.Secret(%q)", s.String()) }

// Vault configures the Vault certificate source. When Enabled is false the
// certificate comes from LOCAL_CERT_DIR and the other fields are ignored.
type Vault struct {
	// Enabled selects Vault instead of LOCAL_CERT_DIR.
	Enabled bool `env:"VAULT_ENABLED"`
	// URL is the Vault address; VAULT_ADDR (Vault's own name) is accepted
	// when VAULT_URL is unset. Use Address.
	URL  string `env:"VAULT_URL"`
	Addr string `env:"VAULT_ADDR"`
	// Token is a Vault token for VAULT_AUTH=token; TokenFile is read
	// instead, at each login, when set (Vault Agent's sink).
	Token     Secret `env:"VAULT_TOKEN"`
	TokenFile string `env:"VAULT_TOKEN_FILE"`
	// Namespace is sent as X-Vault-Namespace (Vault Enterprise, HCP).
	Namespace string `env:"VAULT_NAMESPACE"`
	// CACert verifies Vault's own TLS certificate (PEM file).
	CACert string `env:"VAULT_CACERT"`
	// Timeout bounds each request to Vault.
	Timeout time.Duration `env:"VAULT_CLIENT_TIMEOUT" envDefault:"10s"`

	// Mode is sign (key generated in memory, CSR to <mount>/sign/<role>),
	// issue (<mount>/issue/<role>) or kv (static bundle at CertPath).
	Mode     string        `env:"VAULT_MODE" envDefault:"sign"`
	PKIMount string        `env:"VAULT_PKI_MOUNT" envDefault:"pki"`
	PKIRole  string        `env:"VAULT_PKI_ROLE"`
	CertTTL  time.Duration `env:"VAULT_CERT_TTL"`
	// CertPath is the KV v2 secret holding client_cert, client_key and
	// ca_cert in kv mode, as <mount>/<path>.
	CertPath       string        `env:"VAULT_CERT_PATH" envDefault:"secret/brownie-metadata/certs"`
	KVPollInterval time.Duration `env:"VAULT_KV_POLL_INTERVAL" envDefault:"1m"`
	// RefreshBuffer: refresh no later than this before NotAfter.
	RefreshBuffer time.Duration `env:"VAULT_REFRESH_BUFFER" envDefault:"5m"`
	// CAFile, when set, verifies the Postgres server instead of the CA
	// chain Vault returns.
	CAFile string `env:"VAULT_CA_FILE"`

	// Auth is token, kubernetes or approle.
	Auth                string `env:"VAULT_AUTH" envDefault:"token"`
	K8sRole             string `env:"VAULT_K8S_ROLE"`
	K8sMount            string `env:"VAULT_K8S_MOUNT" envDefault:"kubernetes"`
	K8sTokenFile        string `env:"VAULT_K8S_TOKEN_FILE" envDefault:"/var/run/secrets/kubernetes.io/serviceaccount/token"`
	AppRoleRoleID       string `env:"VAULT_APPROLE_ROLE_ID"`
	AppRoleSecretIDFile string `env:"VAULT_APPROLE_SECRET_ID_FILE"`
	AppRoleMount        string `env:"VAULT_APPROLE_MOUNT" envDefault:"approle"`
}

// Address returns VAULT_URL, or VAULT_ADDR when VAULT_URL is unset.
func (v Vault) Address() string {
	if v.URL != "" {
		return v.URL
	}
	return v.Addr
}

// validate reports every problem with an enabled Vault configuration; it
// reports nothing when Vault is disabled.
func (v Vault) validate() []error {
	if !v.Enabled {
		return nil
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if addr := v.Address(); addr == "" {
		add("VAULT_ENABLED requires VAULT_URL (or VAULT_ADDR)")
	} else if u, err := url.Parse(addr); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("VAULT_URL %q is not an http:// or https:// URL", addr)
	}
	if v.Timeout <= 0 {
		add("VAULT_CLIENT_TIMEOUT must be positive")
	}
	switch v.Mode {
	case VaultModeSign, VaultModeIssue:
		if v.PKIRole == "" {
			add("VAULT_MODE %s requires VAULT_PKI_ROLE", v.Mode)
		}
		if strings.Trim(v.PKIMount, "/") == "" {
			add("VAULT_PKI_MOUNT must not be empty")
		}
		if v.CertTTL < 0 || (v.CertTTL > 0 && v.CertTTL < time.Second) {
			add("VAULT_CERT_TTL must be at least 1s (or unset to use the role's TTL)")
		}
	case VaultModeKV:
		if mount, path, _ := strings.Cut(strings.Trim(v.CertPath, "/"), "/"); mount == "" || path == "" {
			add("VAULT_CERT_PATH %q is not <mount>/<path>", v.CertPath)
		}
		if v.KVPollInterval <= 0 {
			add("VAULT_KV_POLL_INTERVAL must be positive")
		}
	default:
		add("VAULT_MODE %q is not one of sign, issue, kv", v.Mode)
	}
	if v.RefreshBuffer < 0 {
		add("VAULT_REFRESH_BUFFER must not be negative")
	}
	switch v.Auth {
	case VaultAuthToken:
		switch {
		case v.Token == "" && v.TokenFile == "":
			add("VAULT_AUTH token requires VAULT_TOKEN or VAULT_TOKEN_FILE")
		case v.Token != "" && v.TokenFile != "":
			add("VAULT_TOKEN and VAULT_TOKEN_FILE are both set; set one")
		}
	case VaultAuthKubernetes:
		if v.K8sRole == "" {
			add("VAULT_AUTH kubernetes requires VAULT_K8S_ROLE")
		}
		if v.K8sMount == "" || v.K8sTokenFile == "" {
			add("VAULT_K8S_MOUNT and VAULT_K8S_TOKEN_FILE must not be empty")
		}
	case VaultAuthAppRole:
		if v.AppRoleRoleID == "" {
			add("VAULT_AUTH approle requires VAULT_APPROLE_ROLE_ID")
		}
		if v.AppRoleMount == "" {
			add("VAULT_APPROLE_MOUNT must not be empty")
		}
	default:
		add("VAULT_AUTH %q is not one of token, kubernetes, approle", v.Auth)
	}
	return errs
}
