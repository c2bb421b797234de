package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/brownie/brownie-sidecar/admin"
)

// readyCollector exports the readiness checks of /ready at scrape time, so
// that alerts see a sidecar that serves but is not ready. The checks are
// the ones the admin handler runs; each must be cheap and never block on
// I/O (they read state kept by their components). Safe for concurrent
// scrapes.
type readyCollector struct {
	checks        []admin.Check
	ready, checkD *prometheus.Desc
}

func newReadyCollector(checks []admin.Check) prometheus.Collector {
	return &readyCollector{
		checks: checks,
		ready: prometheus.NewDesc("brownie_sidecar_ready",
			"1 when every readiness check passes (GET /ready answers 200), 0 otherwise.", nil, nil),
		checkD: prometheus.NewDesc("brownie_sidecar_ready_check",
			"1 when the readiness check passes, by check (proxy, certificate, shards, shard_map).", []string{"check"}, nil),
	}
}

func (c *readyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.ready
	ch <- c.checkD
}

func (c *readyCollector) Collect(ch chan<- prometheus.Metric) {
	all := 1.0
	for _, chk := range c.checks {
		v := 1.0
		if chk.Ready() != nil {
			v, all = 0, 0
		}
		ch <- prometheus.MustNewConstMetric(c.checkD, prometheus.GaugeValue, v, chk.Name)
	}
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, all)
}
