package config_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// onlyTheAdminTokenIsMissing reports whether err is exactly the one problem
// of the default configuration: an admin port on every interface with no
// token.
func onlyTheAdminTokenIsMissing(err error) bool {
	var cerr *config.Error
	return errors.As(err, &cerr) && len(cerr.Problems) == 1 &&
		strings.Contains(cerr.Problems[0].Error(), "ADMIN_TOKEN or ADMIN_TOKEN_FILE")
}

func TestAnAdminPortOffLoopbackNeedsAToken(t *testing.T) {
	for _, addr := range []string{":8001", "0.0.0.0:8001", "[::]:8001", "10.1.2.3:8001", "admin.internal:8001", "[2001:db8::1]:8001"} {
		_, err := config.Load(map[string]string{"ADMIN_ADDR": addr})
		if err == nil {
			t.Errorf("ADMIN_ADDR=%s without a token accepted", addr)
			continue
		}
		for _, want := range []string{"ADMIN_ADDR", "ADMIN_TOKEN", "ADMIN_TOKEN_FILE", "loopback"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("ADMIN_ADDR=%s: %v lacks %q", addr, err, want)
			}
		}
		for _, tok := range []map[string]string{{"ADMIN_TOKEN": "s3cret"}, {"ADMIN_TOKEN_FILE": "/run/secrets/admin-token"}} {
			env := map[string]string{"ADMIN_ADDR": addr}
			for k, v := range tok {
				env[k] = v
			}
			if _, err := config.Load(env); err != nil {
				t.Errorf("Load(%v): %v", env, err)
			}
		}
	}
}

func TestALoopbackAdminPortNeedsNoToken(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:8001", "127.0.0.2:0", "[::1]:8001", "localhost:8001", "LOCALHOST:8001", "off"} {
		if _, err := config.Load(map[string]string{"ADMIN_ADDR": addr}); err != nil {
			t.Errorf("ADMIN_ADDR=%s: %v", addr, err)
		}
	}
}

func TestMetricsPortReplacesThePortOfTheAdminAddress(t *testing.T) {
	cfg, err := config.Load(map[string]string{"ADMIN_ADDR": "127.0.0.1:8001", "METRICS_PORT": "9100"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Admin.Address(); got != "127.0.0.1:9100" {
		t.Errorf("Address() = %q, want 127.0.0.1:9100", got)
	}
	// The default host (every interface) keeps needing a token with the
	// port changed.
	cfg, err = config.Load(map[string]string{"METRICS_PORT": "9100", "ADMIN_TOKEN": "t"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Admin.Address(); got != ":9100" {
		t.Errorf("Address() = %q, want :9100", got)
	}
	if _, err := config.Load(map[string]string{"METRICS_PORT": "9100"}); !onlyTheAdminTokenIsMissing(err) {
		t.Errorf("METRICS_PORT on every interface without a token: %v", err)
	}
	for _, bad := range []string{"http", "-1", "65536"} {
		_, err := config.Load(map[string]string{"ADMIN_ADDR": "127.0.0.1:8001", "METRICS_PORT": bad})
		if err == nil || !strings.Contains(err.Error(), "METRICS_PORT") {
			t.Errorf("METRICS_PORT=%s: %v", bad, err)
		}
	}
	cfg, err = config.Load(map[string]string{"ADMIN_ADDR": "[::1]:8001", "METRICS_PORT": "9100"})
	if err != nil || cfg.Admin.Address() != "[::1]:9100" {
		t.Errorf("IPv6: %q, %v", cfg.Admin.Address(), err)
	}
}

func TestMetricsAreEnabledByDefault(t *testing.T) {
	cfg, err := config.Load(map[string]string{"ADMIN_ADDR": "127.0.0.1:8001"})
	if err != nil || !cfg.Admin.MetricsEnabled {
		t.Fatalf("MetricsEnabled %v, %v", cfg.Admin.MetricsEnabled, err)
	}
	cfg, err = config.Load(map[string]string{"ADMIN_ADDR": "127.0.0.1:8001", "METRICS_ENABLED": "false"})
	if err != nil || cfg.Admin.MetricsEnabled {
		t.Fatalf("METRICS_ENABLED=false gives %v, %v", cfg.Admin.MetricsEnabled, err)
	}
	_, err = config.Load(map[string]string{"ADMIN_ADDR": "127.0.0.1:8001", "METRICS_ENABLED": "maybe"})
	if err == nil || !strings.Contains(err.Error(), "METRICS_ENABLED") {
		t.Fatalf("METRICS_ENABLED=maybe: %v", err)
	}
}

func TestTheAdminTokenIsSetOnceAndNeverPrinted(t *testing.T) {
	_, err := config.Load(map[string]string{"ADMIN_TOKEN": "a", "ADMIN_TOKEN_FILE": "/t"})
	if err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set") {
		t.Errorf("both set: %v", err)
	}
	cfg, err := config.Load(map[string]string{"ADMIN_TOKEN": "adm1n-s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.Admin.Token) != "adm1n-s3cret" {
		t.Fatalf("token %q", string(cfg.Admin.Token))
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(format, cfg); strings.Contains(out, "s3cret") {
			t.Errorf("%s prints the token: %s", format, out)
		}
	}
}
