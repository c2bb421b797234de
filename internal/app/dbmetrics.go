package app

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/dbmetrics"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/proxy"
	"github.com/brownie/brownie-sidecar/router"
)

// dbMetricsAppName is the application_name of the collector's
// connections, so that pg_stat_activity tells them apart.
const dbMetricsAppName = "brownie-sidecar-dbmetrics"

// newDBMetrics builds the database metrics collector over the shards'
// current primaries, on connections of its own made as the health checks'
// are (the sidecar's client certificate, its own wire client), elected
// with an advisory lock of its own on the first shard's primary. With
// DB_METRICS_INTERVAL unset it is nil.
func newDBMetrics(cfg config.Config, log *zap.Logger, reg prometheus.Registerer, rt *router.Router, px *proxy.Server) (*dbmetrics.Collector, error) {
	if !cfg.DBMetrics.Enabled() {
		return nil, nil
	}
	primaries := shardPrimaries(cfg, rt, px)
	dial := func(ctx context.Context, shard string) (dbmetrics.Conn, error) {
		return px.DialPrimary(ctx, shard, dbMetricsAppName)
	}
	return dbmetrics.New(cfg.DBMetrics, dbmetrics.Deps{
		Log: log, Registerer: reg,
		Elector: dbmetrics.AdvisoryElector{Dial: func(ctx context.Context) (dbmetrics.Conn, error) {
			names := rt.Map().ShardNames()
			if len(names) == 0 {
				return nil, errors.New("the shard map has no shard")
			}
			return dial(ctx, names[0])
		}},
		Shards: func() []string {
			var names []string
			for _, s := range primaries() {
				names = append(names, s.Name)
			}
			return names
		},
		Connect: dial,
	})
}
