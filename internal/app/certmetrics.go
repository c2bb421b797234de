package app

import (
	"github.com/prometheus/client_golang/prometheus"

	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// certCollector exports a certificate source's state at scrape time.
type certCollector struct {
	src                                   brownietls.Source
	notAfter, generation, rotations, fail *prometheus.Desc
}

func newCertCollector(src brownietls.Source) prometheus.Collector {
	return &certCollector{
		src: src,
		notAfter: prometheus.NewDesc("brownie_sidecar_certificate_expiry_timestamp_seconds",
			"NotAfter of the upstream client certificate in use, as a Unix timestamp.", []string{"source"}, nil),
		generation: prometheus.NewDesc("brownie_sidecar_certificate_generation",
			"Generation of the upstream client certificate in use (grows by one per rotation).", []string{"source"}, nil),
		rotations: prometheus.NewDesc("brownie_sidecar_certificate_rotations_total",
			"Upstream client certificate rotations since start.", []string{"source"}, nil),
		fail: prometheus.NewDesc("brownie_sidecar_certificate_refresh_failures_total",
			"Failed certificate loads or refreshes since start.", []string{"source"}, nil),
	}
}

func (c *certCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.notAfter
	ch <- c.generation
	ch <- c.rotations
	ch <- c.fail
}

func (c *certCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Status()
	if !s.NotAfter.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.notAfter, prometheus.GaugeValue, float64(s.NotAfter.Unix()), s.Source)
	}
	ch <- prometheus.MustNewConstMetric(c.generation, prometheus.GaugeValue, float64(s.Generation), s.Source)
	ch <- prometheus.MustNewConstMetric(c.rotations, prometheus.CounterValue, float64(s.Rotations), s.Source)
	ch <- prometheus.MustNewConstMetric(c.fail, prometheus.CounterValue, float64(s.Failures), s.Source)
}
