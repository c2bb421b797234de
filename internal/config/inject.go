package config

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/caarlos0/env/v11"
)

// Certificate modes of injected sidecars (INJECT_CERT_MODE).
const (
	// InjectCertVault: the sidecar logs in to Vault with the Kubernetes
	// auth method, presenting a projected service-account token, and
	// obtains short-lived client certificates from the PKI engine.
	InjectCertVault = "vault"
	// InjectCertSecret: the sidecar reads its client certificate from a
	// Kubernetes Secret (tls.crt, tls.key, ca.crt, as cert-manager writes
	// them) mounted as LOCAL_CERT_DIR.
	InjectCertSecret = "secret"
)

// Inject is the configuration of the `inject` command: the mutating
// admission webhook that adds the sidecar to annotated pods. Fields named
// Sidecar* are the defaults of the injected container, which pod
// annotations may override. It is immutable after LoadInject.
type Inject struct {
	// Addr is the webhook's HTTPS listen address.
	Addr string `env:"INJECT_LISTEN_ADDR" envDefault:":8443"`
	// TLSDir holds the webhook's serving certificate as a Kubernetes TLS
	// Secret mounts it (tls.crt, tls.key); it is watched and reloaded.
	TLSDir string `env:"INJECT_TLS_DIR" envDefault:"/etc/brownie-injector/tls"`
	// AdminAddr serves /health, /ready and /metrics over plain HTTP;
	// "off" disables it.
	AdminAddr string `env:"INJECT_ADMIN_ADDR" envDefault:":8001"`
	// ShutdownTimeout bounds the drain of in-flight reviews after SIGTERM.
	ShutdownTimeout time.Duration `env:"INJECT_SHUTDOWN_TIMEOUT" envDefault:"10s"`

	// Image is the sidecar image (required); ImagePullPolicy its policy.
	Image           string `env:"INJECT_IMAGE"`
	ImagePullPolicy string `env:"INJECT_IMAGE_PULL_POLICY" envDefault:"IfNotPresent"`
	// ConfigMap is the ConfigMap, in the pod's namespace, whose keys
	// become the sidecar's environment (DB_NAME, DB_USER, VAULT_URL…).
	ConfigMap string `env:"INJECT_CONFIGMAP" envDefault:"brownie-sidecar-config"`
	// ShardMap is the ConfigMap holding the shard map under the key
	// brownie.yaml, mounted as SHARD_MAP_FILE; "off" injects no shard map
	// (one shard, DB_HOST). Use ShardMapName.
	ShardMap string `env:"INJECT_SHARD_MAP" envDefault:"brownie-shard-map"`
	// CertMode is vault or secret (see InjectCertVault, InjectCertSecret).
	CertMode string `env:"INJECT_CERT_MODE" envDefault:"vault"`
	// VaultRole is the Vault Kubernetes-auth role (VAULT_K8S_ROLE) and
	// VaultAudience the audience of the projected token it is given.
	VaultRole     string `env:"INJECT_VAULT_ROLE" envDefault:"brownie-sidecar"`
	VaultAudience string `env:"INJECT_VAULT_AUDIENCE" envDefault:"vault"`
	// CertSecret is the client-certificate Secret of the secret mode.
	CertSecret string `env:"INJECT_CERT_SECRET" envDefault:"brownie-sidecar-client-tls"`
	// AdminTokenSecret is the Secret (key "token") whose value becomes
	// the sidecar's ADMIN_TOKEN: its admin port listens on the pod IP for
	// the kubelet's probes and Prometheus.
	AdminTokenSecret string `env:"INJECT_ADMIN_TOKEN_SECRET" envDefault:"brownie-sidecar-admin"`
	// SidecarAdminPort is the injected sidecar's admin port (probes,
	// metrics); SidecarListenAddr its LISTEN_ADDR.
	SidecarAdminPort  int    `env:"INJECT_SIDECAR_ADMIN_PORT" envDefault:"8001"`
	SidecarListenAddr string `env:"INJECT_SIDECAR_LISTEN_ADDR" envDefault:"127.0.0.1:5432"`
	// Resources of the injected container, as Kubernetes quantities;
	// "none" sets no request or limit.
	CPURequest    string `env:"INJECT_CPU_REQUEST" envDefault:"50m"`
	CPULimit      string `env:"INJECT_CPU_LIMIT"`
	MemoryRequest string `env:"INJECT_MEMORY_REQUEST" envDefault:"64Mi"`
	MemoryLimit   string `env:"INJECT_MEMORY_LIMIT" envDefault:"256Mi"`
	// RunAsUser is the injected container's (non-root) user and group.
	RunAsUser int64 `env:"INJECT_RUN_AS_USER" envDefault:"65532"`

	LogLevel  string `env:"LOG_LEVEL" envDefault:"info"`
	LogFormat string `env:"LOG_FORMAT" envDefault:"json"`
}

// ShardMapName returns the shard-map ConfigMap's name, "" when off.
func (c Inject) ShardMapName() string {
	if c.ShardMap == AdminOff {
		return ""
	}
	return c.ShardMap
}

// LoadInject parses and validates the injector's configuration from
// environ. The error, if any, lists every problem. Quantities and names of
// the injected container are checked by package inject, with the same
// rules as the annotations that override them.
func LoadInject(environ map[string]string) (Inject, error) {
	cfg, err := env.ParseAsWithOptions[Inject](env.Options{Environment: environ})
	var problems []error
	if err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			problems = append(problems, agg.Errors...)
		} else {
			problems = append(problems, err)
		}
	}
	add := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		add("INJECT_LISTEN_ADDR %q: %v", cfg.Addr, err)
	}
	if cfg.AdminAddr != AdminOff {
		if _, _, err := net.SplitHostPort(cfg.AdminAddr); err != nil {
			add("INJECT_ADMIN_ADDR %q: %v", cfg.AdminAddr, err)
		}
	}
	if cfg.TLSDir == "" {
		add("INJECT_TLS_DIR must name the directory holding tls.crt and tls.key")
	}
	if cfg.ShutdownTimeout < 0 {
		add("INJECT_SHUTDOWN_TIMEOUT must not be negative")
	}
	if cfg.Image == "" {
		add("INJECT_IMAGE must name the sidecar image")
	}
	switch cfg.ImagePullPolicy {
	case "Always", "IfNotPresent", "Never":
	default:
		add("INJECT_IMAGE_PULL_POLICY %q is not one of Always, IfNotPresent, Never", cfg.ImagePullPolicy)
	}
	switch cfg.CertMode {
	case InjectCertVault:
		if cfg.VaultRole == "" || cfg.VaultAudience == "" {
			add("INJECT_VAULT_ROLE and INJECT_VAULT_AUDIENCE must not be empty with INJECT_CERT_MODE=vault")
		}
	case InjectCertSecret:
		if cfg.CertSecret == "" {
			add("INJECT_CERT_SECRET must not be empty with INJECT_CERT_MODE=secret")
		}
	default:
		add("INJECT_CERT_MODE %q is not one of vault, secret", cfg.CertMode)
	}
	if cfg.ConfigMap == "" {
		add("INJECT_CONFIGMAP must name the sidecar's ConfigMap")
	}
	if cfg.AdminTokenSecret == "" {
		add("INJECT_ADMIN_TOKEN_SECRET must name the Secret of the sidecars' admin token")
	}
	if cfg.SidecarAdminPort < 1 || cfg.SidecarAdminPort > 65535 {
		add("INJECT_SIDECAR_ADMIN_PORT %d is not a TCP port", cfg.SidecarAdminPort)
	}
	if _, _, err := net.SplitHostPort(cfg.SidecarListenAddr); err != nil {
		add("INJECT_SIDECAR_LISTEN_ADDR %q: %v", cfg.SidecarListenAddr, err)
	}
	if cfg.RunAsUser < 1 {
		add("INJECT_RUN_AS_USER must be a non-root user id (1 or more)")
	}
	if err := (Config{LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat}).validateLog(); err != nil {
		problems = append(problems, err...)
	}
	if len(problems) > 0 {
		return cfg, &Error{Problems: flatten(problems)}
	}
	return cfg, nil
}
