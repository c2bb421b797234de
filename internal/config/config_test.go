package config_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
)

func TestLoadFromAnEmptyEnvironmentGivesTheDefaults(t *testing.T) {
	// The defaults listen on :8001 with no token, which Validate refuses;
	// Load still returns the parsed defaults with that one problem.
	got, err := config.Load(map[string]string{})
	if !onlyTheAdminTokenIsMissing(err) {
		t.Fatalf("Load: %v", err)
	}
	want := config.Config{
		DB: config.DB{
			Host:           "localhost",
			Port:           5432,
			Name:           "brownie_metadata",
			User:           "brownie-fastapi-server",
			SSLMode:        config.SSLVerifyFull,
			CertDir:        "dev-certs",
			ConnectTimeout: 5 * time.Second,
		},
		Listen: config.Listen{
			Addr:           "127.0.0.1:5432",
			StartupTimeout: 15 * time.Second,
			MaxClients:     10000,
			IdleRelease:    time.Second,
		},
		Pool: config.Pool{
			Mode:              config.PoolSession,
			Size:              20,
			MinIdle:           0,
			IdleTimeout:       10 * time.Minute,
			MaxLifetime:       time.Hour,
			LifetimeJitter:    5 * time.Minute,
			AcquireTimeout:    30 * time.Second,
			CheckDelay:        time.Second,
			RetireInterval:    time.Second,
			ResetQuery:        "DISCARD ALL",
			ResetTimeout:      5 * time.Second,
			PinPolicy:         "pin",
			PreparedCacheSize: 500,
		},
		Routing:         routingDefaults,
		Admin:           config.Admin{Addr: ":8001", MetricsEnabled: true},
		Vault:           vaultDefaults,
		Backup:          backupDefaults,
		DBMetrics:       config.DBMetrics{QueryTimeout: 5 * time.Second},
		LogLevel:        "info",
		LogFormat:       "json",
		ShutdownTimeout: 30 * time.Second,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestLoadAcceptsANilEnvironment(t *testing.T) {
	if _, err := config.Load(nil); !onlyTheAdminTokenIsMissing(err) {
		t.Errorf("Load(nil): %v", err)
	}
}

func TestLoadMapsEachVariableToItsField(t *testing.T) {
	env := map[string]string{
		"DB_HOST":                  "db.internal",
		"DB_PORT":                  "6432",
		"DB_NAME":                  "other_db",
		"DB_USER":                  "svc",
		"DB_SSL_MODE":              "verify-ca",
		"DB_SSL_SERVER_NAME":       "db.example.com",
		"LOCAL_CERT_DIR":           "/etc/certs",
		"DB_CONNECT_TIMEOUT":       "2s",
		"LISTEN_ADDR":              "0.0.0.0:6543",
		"LISTEN_SOCKET_DIR":        "/run/brownie",
		"CLIENT_TLS_CERT":          "/etc/tls/tls.crt",
		"CLIENT_TLS_KEY":           "/etc/tls/tls.key",
		"CLIENT_AUTH_FILE":         "/etc/brownie/userlist.txt",
		"CLIENT_ALLOWED_CIDRS":     "10.0.0.0/8, fd00::/8",
		"CLIENT_STARTUP_TIMEOUT":   "3s",
		"MAX_CLIENT_CONN":          "50",
		"CLIENT_IDLE_RELEASE":      "250ms",
		"POOL_MODE":                "session",
		"POOL_SIZE":                "7",
		"POOL_MIN_IDLE":            "2",
		"POOL_IDLE_TIMEOUT":        "1m",
		"POOL_MAX_LIFETIME":        "2h",
		"POOL_LIFETIME_JITTER":     "30s",
		"POOL_ACQUIRE_TIMEOUT":     "4s",
		"POOL_CHECK_DELAY":         "100ms",
		"POOL_RETIRE_INTERVAL":     "250ms",
		"POOL_RESET_QUERY":         "RESET ALL",
		"POOL_PIN_POLICY":          "error",
		"POOL_PREPARED_CACHE_SIZE": "64",
		"POOL_RESET_TIMEOUT":       "1s",
		"ADMIN_ADDR":               "127.0.0.1:9000",
		"LOG_LEVEL":                "DEBUG",
		"LOG_FORMAT":               "console",
		"SHUTDOWN_TIMEOUT":         "0s",
	}
	got, err := config.Load(env)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := config.Config{
		DB: config.DB{
			Host: "db.internal", Port: 6432, Name: "other_db", User: "svc",
			SSLMode: config.SSLVerifyCA, ServerName: "db.example.com",
			CertDir: "/etc/certs", ConnectTimeout: 2 * time.Second,
		},
		Listen: config.Listen{
			Addr: "0.0.0.0:6543", SocketDir: "/run/brownie",
			TLSCert: "/etc/tls/tls.crt", TLSKey: "/etc/tls/tls.key",
			AuthFile:       "/etc/brownie/userlist.txt",
			AllowedCIDRs:   []string{"10.0.0.0/8", " fd00::/8"},
			StartupTimeout: 3 * time.Second, MaxClients: 50, IdleRelease: 250 * time.Millisecond,
		},
		Pool: config.Pool{
			Mode: config.PoolSession, Size: 7, MinIdle: 2,
			IdleTimeout: time.Minute, MaxLifetime: 2 * time.Hour, LifetimeJitter: 30 * time.Second,
			AcquireTimeout: 4 * time.Second, RetireInterval: 250 * time.Millisecond, CheckDelay: 100 * time.Millisecond,
			ResetQuery: "RESET ALL", ResetTimeout: time.Second,
			PinPolicy: "error", PreparedCacheSize: 64,
		},
		Routing:         routingDefaults,
		Admin:           config.Admin{Addr: "127.0.0.1:9000", MetricsEnabled: true},
		Vault:           vaultDefaults,
		Backup:          backupDefaults,
		DBMetrics:       config.DBMetrics{QueryTimeout: 5 * time.Second},
		LogLevel:        "DEBUG",
		LogFormat:       "console",
		ShutdownTimeout: 0,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load:\n got %+v\nwant %+v", got, want)
	}
}

func TestLoadIgnoresVariablesItDoesNotKnow(t *testing.T) {
	if _, err := config.Load(map[string]string{"PATH": "/usr/bin", "PGPASSWORD": "x", "ADMIN_ADDR": "127.0.0.1:8001"}); err != nil {
		t.Errorf("Load: %v", err)
	}
}

func TestLoadReportsEveryProblemInOneError(t *testing.T) {
	env := map[string]string{
		"DB_SSL_MODE":          "disable",
		"POOL_SIZE":            "0",
		"LISTEN_ADDR":          "localhost",
		"POOL_IDLE_TIMEOUT":    "soon",
		"CLIENT_ALLOWED_CIDRS": "10.0.0.0/8,10.0.0.300/24",
	}
	_, err := config.Load(env)
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Load: got %T %v, want *config.Error", err, err)
	}
	msg := err.Error()
	for _, want := range []string{
		`DB_SSL_MODE "disable"`,
		"POOL_SIZE must be at least 1",
		`LISTEN_ADDR "localhost"`,
		`"soon"`, // the unparsable duration
		`CLIENT_ALLOWED_CIDRS entry "10.0.0.300/24"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, `"10.0.0.0/8"`) {
		t.Errorf("message blames the valid CIDR:\n%s", msg)
	}
	if !strings.HasPrefix(msg, "invalid configuration:") || strings.Count(msg, "\n  - ") != len(cerr.Problems) {
		t.Errorf("message is not one problem per line:\n%s", msg)
	}
	if len(cerr.Problems) < 5 {
		t.Errorf("got %d problems, want at least 5: %v", len(cerr.Problems), cerr.Problems)
	}
	for _, p := range cerr.Problems {
		if strings.Contains(p.Error(), "\n") {
			t.Errorf("problem %q spans several lines; Problems should be flattened", p)
		}
	}
}

// TestLoadNamesTheVariableOfAnUnparsableValue: the operator sets variables,
// so a parse error should say which one.
func TestLoadNamesTheVariableOfAnUnparsableValue(t *testing.T) {
	for _, name := range []string{"POOL_IDLE_TIMEOUT", "DB_PORT", "MAX_CLIENT_CONN"} {
		_, err := config.Load(map[string]string{name: "soon"})
		if err == nil {
			t.Errorf("%s=soon accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("%s=soon reported without the variable name:\n%v", name, err)
		}
	}
}

func TestLoadAcceptsTransactionPoolingAndChecksThePinPolicy(t *testing.T) {
	cfg, err := config.Load(map[string]string{"POOL_MODE": "transaction", "POOL_PIN_POLICY": "error", "ADMIN_ADDR": "127.0.0.1:8001"})
	if err != nil || cfg.Pool.Mode != config.PoolTransaction || cfg.Pool.PinPolicy != config.PinError {
		t.Fatalf("got %+v, %v", cfg.Pool, err)
	}
	_, err = config.Load(map[string]string{"POOL_PIN_POLICY": "sometimes", "POOL_PREPARED_CACHE_SIZE": "0"})
	if err == nil || !strings.Contains(err.Error(), "POOL_PIN_POLICY") || !strings.Contains(err.Error(), "POOL_PREPARED_CACHE_SIZE") {
		t.Fatalf("got %v", err)
	}
}

func TestValidateRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"DB_SSL_MODE": "prefer"}, "DB_SSL_MODE"},
		{map[string]string{"DB_PORT": "70000"}, "DB_PORT 70000"},
		{map[string]string{"DB_PORT": "0"}, "DB_PORT 0"},
		{map[string]string{"DB_CONNECT_TIMEOUT": "0s"}, "DB_CONNECT_TIMEOUT"},
		{map[string]string{"CLIENT_TLS_CERT": "/x.crt"}, "CLIENT_TLS_CERT and CLIENT_TLS_KEY"},
		{map[string]string{"CLIENT_ALLOWED_CIDRS": "10.0.0.1"}, `"10.0.0.1" is not a CIDR prefix`},
		{map[string]string{"CLIENT_STARTUP_TIMEOUT": "-1s"}, "CLIENT_STARTUP_TIMEOUT"},
		{map[string]string{"CLIENT_IDLE_RELEASE": "0s"}, "CLIENT_IDLE_RELEASE"},
		{map[string]string{"MAX_CLIENT_CONN": "0"}, "MAX_CLIENT_CONN"},
		{map[string]string{"POOL_MODE": "statement"}, `POOL_MODE "statement"`},
		{map[string]string{"POOL_MIN_IDLE": "21"}, "POOL_MIN_IDLE"},
		{map[string]string{"POOL_MAX_LIFETIME": "-1h"}, "POOL_MAX_LIFETIME"},
		{map[string]string{"POOL_ACQUIRE_TIMEOUT": "0s"}, "POOL_ACQUIRE_TIMEOUT"},
		{map[string]string{"POOL_RESET_TIMEOUT": "0s"}, "POOL_RESET_TIMEOUT"},
		{map[string]string{"POOL_CHECK_DELAY": "-1s"}, "POOL_CHECK_DELAY"},
		{map[string]string{"ADMIN_ADDR": "8001"}, `ADMIN_ADDR "8001"`},
		{map[string]string{"LOG_LEVEL": "verbose"}, `LOG_LEVEL "verbose"`},
		{map[string]string{"LOG_FORMAT": "text"}, `LOG_FORMAT "text"`},
		{map[string]string{"SHUTDOWN_TIMEOUT": "-1s"}, "SHUTDOWN_TIMEOUT"},
	} {
		_, err := config.Load(tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%v) = %v, want a problem mentioning %q", tc.env, err, tc.want)
		}
	}
}

func TestLoadTreatsAnEmptyValueAsUnset(t *testing.T) {
	got, err := config.Load(map[string]string{"DB_HOST": "", "LISTEN_ADDR": "", "ADMIN_ADDR": "127.0.0.1:8001"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.DB.Host != "localhost" || got.Listen.Addr != "127.0.0.1:5432" {
		t.Errorf("got DB_HOST %q, LISTEN_ADDR %q; want the defaults", got.DB.Host, got.Listen.Addr)
	}
}

func TestValidateAcceptsAnEmptyAdminAddress(t *testing.T) {
	cfg, err := config.Load(map[string]string{"ADMIN_ADDR": "off"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Addr = ""
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestLoadDisablesTheAdminPortWithOff: an empty value means the default for
// every variable, so the admin port is switched off with ADMIN_ADDR=off.
func TestLoadDisablesTheAdminPortWithOff(t *testing.T) {
	cfg, err := config.Load(map[string]string{"ADMIN_ADDR": "off"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Admin.Enabled() {
		t.Fatalf("ADMIN_ADDR=off gives an enabled admin port %q", cfg.Admin.Addr)
	}
	if cfg, _ := config.Load(map[string]string{"ADMIN_ADDR": ""}); !cfg.Admin.Enabled() || cfg.Admin.Addr != ":8001" {
		t.Fatalf("ADMIN_ADDR= gives %q, want the default :8001", cfg.Admin.Addr)
	}
}
