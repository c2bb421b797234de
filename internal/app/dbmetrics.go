package app

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/backup"
	"github.com/brownie/brownie-sidecar/dbmetrics"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/proxy"
	"github.com/brownie/brownie-sidecar/router"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// newDBMetrics builds the database metrics collector over the shards'
// current primaries, connecting with the sidecar's own client certificate
// as backups do and elected with the backups' advisory lock under its own
// key. With DB_METRICS_INTERVAL unset it is nil.
func newDBMetrics(cfg config.Config, log *zap.Logger, reg prometheus.Registerer, certs brownietls.Source,
	rt *router.Router, px *proxy.Server) (*dbmetrics.Collector, error) {
	if !cfg.DBMetrics.Enabled() {
		return nil, nil
	}
	primaries := shardPrimaries(cfg, rt, px)
	connector := backup.NewConnector(backup.ConnectorDeps{
		Database: cfg.DB.Name, User: cfg.DB.User, SSLMode: cfg.DB.SSLMode,
		Certs: backup.CertsFromSource(certs), TempDir: cfg.Backup.TempDir, AppName: "brownie-sidecar-dbmetrics",
	})
	locker := backup.NewPGAdvisoryLocker(backup.LockerDeps{
		Log: log, Shards: primaries, Database: cfg.DB.Name, User: cfg.DB.User, SSLMode: cfg.DB.SSLMode,
		Certs: backup.CertsFromSource(certs), TempDir: cfg.Backup.TempDir, Key: dbmetrics.AdvisoryLockKey,
	})
	return dbmetrics.New(cfg.DBMetrics, dbmetrics.Deps{
		Log: log, Registerer: reg, Elector: advisoryElector{locker},
		Shards: func() []string {
			var names []string
			for _, s := range primaries() {
				names = append(names, s.Name)
			}
			return names
		},
		Connect: func(ctx context.Context, shard string) (dbmetrics.Conn, error) {
			for _, s := range primaries() {
				if s.Name == shard {
					conn, err := connector.Connect(ctx, s)
					if err != nil {
						return nil, err
					}
					return conn, nil
				}
			}
			return nil, fmt.Errorf("shard %s is not in the shard map", shard)
		},
	})
}

// advisoryElector adapts backup.PGAdvisoryLocker to dbmetrics.Elector.
type advisoryElector struct{ l *backup.PGAdvisoryLocker }

func (e advisoryElector) TryAcquire(ctx context.Context) (dbmetrics.Lease, bool, error) {
	lease, ok, err := e.l.TryAcquire(ctx)
	if !ok {
		return nil, false, err
	}
	return lease, true, nil
}
