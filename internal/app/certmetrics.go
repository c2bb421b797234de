package app

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// certCollector exports a certificate source's state at scrape time. Its
// labels are bounded: source ("file", "vault"), reason (the tls Reason
// constants) and method (the Vault auth methods). It reads only
// Source.Status, so it is safe for concurrent scrapes.
type certCollector struct {
	src brownietls.Source
	now func() time.Time

	notAfter, expiresIn, generation, rotations, fail, failByReason *prometheus.Desc
	logins, loginFail, renewals, renewFail                         *prometheus.Desc
}

// refreshFailureReasons are the tls Reason constants.
var refreshFailureReasons = []string{
	brownietls.ReasonRead, brownietls.ReasonParse, brownietls.ReasonMismatch, brownietls.ReasonExpired,
	brownietls.ReasonNotYetValid, brownietls.ReasonCA, brownietls.ReasonVaultUnreachable,
	brownietls.ReasonVaultUnavailable, brownietls.ReasonVaultDenied, brownietls.ReasonVaultRejected,
	brownietls.ReasonNotFound, brownietls.ReasonLogin,
}

func newCertCollector(src brownietls.Source) prometheus.Collector {
	return &certCollector{
		src: src,
		now: time.Now,
		notAfter: prometheus.NewDesc("brownie_sidecar_certificate_expiry_timestamp_seconds",
			"NotAfter of the upstream client certificate in use, as a Unix timestamp.", []string{"source"}, nil),
		expiresIn: prometheus.NewDesc("brownie_sidecar_certificate_expiry_seconds",
			"Seconds until the upstream client certificate in use expires (negative once expired).", []string{"source"}, nil),
		generation: prometheus.NewDesc("brownie_sidecar_certificate_generation",
			"Generation of the upstream client certificate in use (grows by one per rotation).", []string{"source"}, nil),
		rotations: prometheus.NewDesc("brownie_sidecar_certificate_rotations_total",
			"Upstream client certificate rotations since start.", []string{"source"}, nil),
		fail: prometheus.NewDesc("brownie_sidecar_certificate_refresh_failures_total",
			"Failed certificate loads or refreshes since start.", []string{"source"}, nil),
		failByReason: prometheus.NewDesc("brownie_sidecar_certificate_refresh_failures_by_reason_total",
			"Failed certificate loads or refreshes since start, by reason (read, parse, mismatch, expired, not_yet_valid, ca, "+
				"vault_unreachable, vault_unavailable, vault_denied, vault_rejected, not_found, login).",
			[]string{"source", "reason"}, nil),
		logins: prometheus.NewDesc("brownie_sidecar_vault_logins_total",
			"Vault tokens obtained since start (logins, or token file reads checked with lookup-self).", []string{"method"}, nil),
		loginFail: prometheus.NewDesc("brownie_sidecar_vault_login_failures_total",
			"Failed attempts to obtain a Vault token since start.", []string{"method"}, nil),
		renewals: prometheus.NewDesc("brownie_sidecar_vault_token_renewals_total",
			"Successful Vault token renewals (renew-self) since start.", []string{"method"}, nil),
		renewFail: prometheus.NewDesc("brownie_sidecar_vault_token_renewal_failures_total",
			"Failed Vault token renewals since start; a login follows each.", []string{"method"}, nil),
	}
}

func (c *certCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.notAfter, c.expiresIn, c.generation, c.rotations, c.fail, c.failByReason,
		c.logins, c.loginFail, c.renewals, c.renewFail} {
		ch <- d
	}
}

func (c *certCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Status()
	if !s.NotAfter.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.notAfter, prometheus.GaugeValue, float64(s.NotAfter.Unix()), s.Source)
		ch <- prometheus.MustNewConstMetric(c.expiresIn, prometheus.GaugeValue, s.NotAfter.Sub(c.now()).Seconds(), s.Source)
	}
	ch <- prometheus.MustNewConstMetric(c.generation, prometheus.GaugeValue, float64(s.Generation), s.Source)
	ch <- prometheus.MustNewConstMetric(c.rotations, prometheus.CounterValue, float64(s.Rotations), s.Source)
	ch <- prometheus.MustNewConstMetric(c.fail, prometheus.CounterValue, float64(s.Failures), s.Source)
	// Every known reason is exported, at 0 until it happens, so that
	// alerts and dashboards on increase() see the first failure.
	reasons := slices.Clone(refreshFailureReasons)
	for r := range s.FailuresByReason {
		if !slices.Contains(reasons, r) {
			reasons = append(reasons, r)
		}
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		ch <- prometheus.MustNewConstMetric(c.failByReason, prometheus.CounterValue, float64(s.FailuresByReason[r]), s.Source, r)
	}
	if s.AuthMethod != "" {
		ch <- prometheus.MustNewConstMetric(c.logins, prometheus.CounterValue, float64(s.Logins), s.AuthMethod)
		ch <- prometheus.MustNewConstMetric(c.loginFail, prometheus.CounterValue, float64(s.LoginFailures), s.AuthMethod)
		ch <- prometheus.MustNewConstMetric(c.renewals, prometheus.CounterValue, float64(s.Renewals), s.AuthMethod)
		ch <- prometheus.MustNewConstMetric(c.renewFail, prometheus.CounterValue, float64(s.RenewFailures), s.AuthMethod)
	}
}
