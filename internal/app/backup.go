package app

import (
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/backup"
	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/proxy"
	"github.com/brownie/brownie-sidecar/router"
	brownietls "github.com/brownie/brownie-sidecar/tls"
)

// workerName is the backup worker program shipped beside brownie-sidecar.
const workerName = "brownie-backup"

// newBackups builds the backup manager over the shards' current primaries
// (after a failover, the promoted one) and the sidecar's own client
// certificate. With BACKUP_PROVIDER unset it is nil: the /backup/
// endpoints answer 503. The worker is BACKUP_WORKER, else brownie-backup
// beside the running executable; it gets environ without the sidecar's
// configuration variables.
func newBackups(cfg config.Config, environ map[string]string, log *zap.Logger, reg prometheus.Registerer,
	certs brownietls.Source, rt *router.Router, px *proxy.Server) (*backup.Manager, error) {
	if cfg.Backup.Provider == "" {
		return nil, nil
	}
	worker := cfg.Backup.Worker
	if worker == "" {
		if exe, err := os.Executable(); err == nil {
			worker = filepath.Join(filepath.Dir(exe), workerName)
		}
	}
	return backup.New(cfg.Backup, backup.Deps{
		Log: log, Registerer: reg, Version: Version,
		Worker: worker, WorkerEnv: backup.WorkerEnviron(environ),
		Shards:   shardPrimaries(cfg, rt, px),
		Database: cfg.DB.Name, User: cfg.DB.User, SSLMode: cfg.DB.SSLMode,
		Certs: backup.CertsFromSource(certs),
	})
}

// shardPrimaries returns every shard's current primary as the health
// checks see it (after a failover, the promoted one), in map order, for
// the components that connect to the primaries themselves: backups and
// database metrics.
func shardPrimaries(cfg config.Config, rt *router.Router, px *proxy.Server) func() []backup.Shard {
	return func() []backup.Shard {
		m := rt.Map()
		var out []backup.Shard
		for _, st := range px.ShardStatus() {
			sh, _ := m.Shard(st.Name)
			host, port, err := net.SplitHostPort(st.Primary)
			if err != nil {
				continue
			}
			p, _ := strconv.Atoi(port)
			name := sh.Primary.ServerName
			if name == "" && st.Name == m.Shards[0].Name && cfg.Routing.ShardMapFile == "" {
				name = cfg.DB.ServerName
			}
			out = append(out, backup.Shard{Name: st.Name, Host: host, Port: p, ServerName: name})
		}
		return out
	}
}
