package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector returns a Prometheus collector exporting the pools' state at
// scrape time. Register it once.
func (s *Server) Collector() prometheus.Collector { return (*poolCollector)(s) }

type poolCollector Server

var (
	descUpstreams = prometheus.NewDesc("brownie_sidecar_upstream_connections",
		"Upstream connections by state (idle, in_use, dialing).", []string{"shard", "role", "state"}, nil)
	descWaiting = prometheus.NewDesc("brownie_sidecar_pool_waiting_clients",
		"Clients waiting for an upstream connection.", []string{"shard", "role"}, nil)
	descPoolSize = prometheus.NewDesc("brownie_sidecar_pool_size",
		"Maximum upstream connections per pool.", []string{"shard", "role"}, nil)
	descTimeouts = prometheus.NewDesc("brownie_sidecar_pool_acquire_timeouts_total",
		"Acquires that gave up after POOL_ACQUIRE_TIMEOUT (sent 53300).", []string{"shard", "role"}, nil)
	descClosed = prometheus.NewDesc("brownie_sidecar_upstream_closed_total",
		"Upstream connections closed by the pool, by reason.", []string{"shard", "role", "reason"}, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUpstreams, descWaiting, descPoolSize, descTimeouts, descClosed} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := (*Server)(c)
	s.mu.Lock()
	pools := make(map[poolKey]*upstreamPool, len(s.pools))
	for k, p := range s.pools {
		pools[k] = p
	}
	s.mu.Unlock()
	for k, p := range pools {
		st := p.Stats()
		shard, role := k.target.Shard, k.target.Role.String()
		gauge := func(d *prometheus.Desc, v int, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), append([]string{shard, role}, extra...)...)
		}
		counter := func(d *prometheus.Desc, v uint64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{shard, role}, extra...)...)
		}
		gauge(descUpstreams, st.Idle, "idle")
		gauge(descUpstreams, st.InUse, "in_use")
		gauge(descUpstreams, st.Dialing, "dialing")
		gauge(descWaiting, st.Waiting)
		gauge(descPoolSize, st.Size)
		counter(descTimeouts, st.Timeouts)
		counter(descClosed, st.ClosedLifetime, "lifetime")
		counter(descClosed, st.ClosedIdle, "idle_timeout")
		counter(descClosed, st.ClosedRetired, "certificate_rotated")
		counter(descClosed, st.ClosedDestroyed, "destroyed")
		counter(descClosed, st.ClosedBroken, "broken_while_idle")
	}
}
