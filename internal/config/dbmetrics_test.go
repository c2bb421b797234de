package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
)

func TestDatabaseMetricsAreOffByDefault(t *testing.T) {
	cfg, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DBMetrics.Enabled() || cfg.DBMetrics != (config.DBMetrics{QueryTimeout: 5 * time.Second}) {
		t.Errorf("database metrics from an empty environment: %+v", cfg.DBMetrics)
	}
}

func TestLoadReadsTheDatabaseMetricsVariables(t *testing.T) {
	cfg, err := load(map[string]string{"DB_METRICS_INTERVAL": "30s", "DB_METRICS_QUERY_TIMEOUT": "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.DBMetrics.Enabled() || cfg.DBMetrics.Interval != 30*time.Second || cfg.DBMetrics.QueryTimeout != 2*time.Second {
		t.Errorf("got %+v", cfg.DBMetrics)
	}
}

func TestBadDatabaseMetricsSettingsAreAllReported(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"DB_METRICS_INTERVAL": "-1s", "DB_METRICS_QUERY_TIMEOUT": "0s"},
			[]string{"DB_METRICS_INTERVAL must not be negative", "DB_METRICS_QUERY_TIMEOUT must be positive"}},
		{map[string]string{"DB_METRICS_INTERVAL": "100ms"}, []string{"DB_METRICS_INTERVAL 100ms is below 1s"}},
		{map[string]string{"DB_METRICS_INTERVAL": "2s", "DB_METRICS_QUERY_TIMEOUT": "3s"},
			[]string{"DB_METRICS_QUERY_TIMEOUT 3s is longer than DB_METRICS_INTERVAL 2s"}},
		{map[string]string{"DB_METRICS_INTERVAL": "often"}, []string{"DB_METRICS_INTERVAL"}},
	} {
		_, err := load(tc.env)
		if err == nil {
			t.Errorf("%v: accepted", tc.env)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", tc.env, err, w)
			}
		}
	}
}
