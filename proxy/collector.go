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

// Collect exports the pools summed per shard and role: a shard's
// replicas, and its old and new primary after a failover, are pools of
// their own (one per host) that share those labels.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := (*Server)(c)
	s.mu.Lock()
	pools := make(map[poolKey]*upstreamPool, len(s.pools))
	for k, p := range s.pools {
		pools[k] = p
	}
	s.mu.Unlock()
	type group struct{ shard, role string }
	sums := map[group]*[11]float64{}
	var order []group
	for k, p := range pools {
		st := p.Stats()
		g := group{k.target.Shard, k.target.Role.String()}
		v := sums[g]
		if v == nil {
			v = new([11]float64)
			sums[g] = v
			order = append(order, g)
		}
		for i, x := range []float64{float64(st.Idle), float64(st.InUse), float64(st.Dialing), float64(st.Waiting), float64(st.Size),
			float64(st.Timeouts), float64(st.ClosedLifetime), float64(st.ClosedIdle), float64(st.ClosedRetired),
			float64(st.ClosedDestroyed), float64(st.ClosedBroken)} {
			v[i] += x
		}
	}
	for _, g := range order {
		v := sums[g]
		gauge := func(d *prometheus.Desc, x float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, append([]string{g.shard, g.role}, extra...)...)
		}
		counter := func(d *prometheus.Desc, x float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, x, append([]string{g.shard, g.role}, extra...)...)
		}
		gauge(descUpstreams, v[0], "idle")
		gauge(descUpstreams, v[1], "in_use")
		gauge(descUpstreams, v[2], "dialing")
		gauge(descWaiting, v[3])
		gauge(descPoolSize, v[4])
		counter(descTimeouts, v[5])
		counter(descClosed, v[6], "lifetime")
		counter(descClosed, v[7], "idle_timeout")
		counter(descClosed, v[8], "certificate_rotated")
		counter(descClosed, v[9], "destroyed")
		counter(descClosed, v[10], "broken_while_idle")
	}
}
