package config

import (
	"fmt"
	"time"
)

// Routing configures shard routing, read replicas and health checks.
type Routing struct {
	// ShardMapFile is the YAML shard map (see deploy/shardmap). Empty: one
	// shard, the DB_HOST:DB_PORT primary, holding every table.
	ShardMapFile string `env:"SHARD_MAP_FILE"`
	// HealthInterval is the period of the health check of every host.
	HealthInterval time.Duration `env:"HEALTH_CHECK_INTERVAL" envDefault:"1s"`
	// HealthTimeout bounds one health check (connect and query).
	HealthTimeout time.Duration `env:"HEALTH_CHECK_TIMEOUT" envDefault:"3s"`
	// BanTime is how long a replica that failed is left out of reads
	// before it is tried again.
	BanTime time.Duration `env:"REPLICA_BAN_TIME" envDefault:"10s"`
	// MaxReplicaLag is the replay delay above which a replica gets no
	// reads; MaxReplicaLagBytes the WAL distance.
	MaxReplicaLag      time.Duration `env:"MAX_REPLICA_LAG" envDefault:"10s"`
	MaxReplicaLagBytes int64         `env:"MAX_REPLICA_LAG_BYTES" envDefault:"16777216"`
	// ReplicaSelection is round_robin or least_busy.
	ReplicaSelection string `env:"REPLICA_SELECTION" envDefault:"round_robin"`
	// TwoPhaseTimeout is how long the first (anchor) shard's part of a
	// write spanning shards may stay prepared before a sidecar presumes its
	// coordinator gone and rolls the write back. TwoPhaseRecoveryInterval
	// is the period of the scan for such leftovers.
	TwoPhaseTimeout          time.Duration `env:"TWO_PHASE_TIMEOUT" envDefault:"60s"`
	TwoPhaseRecoveryInterval time.Duration `env:"TWO_PHASE_RECOVERY_INTERVAL" envDefault:"10s"`
	// FailoverWait is how long a statement or new transaction that needs a
	// shard's primary waits, while that primary is down, for the health
	// checks to find a primary again (the old one back, or a promoted
	// standby) before it fails with 08006. 0 fails at once.
	FailoverWait time.Duration `env:"FAILOVER_WAIT" envDefault:"15s"`
}

// Replica selection strategies.
const (
	ReplicaRoundRobin = "round_robin"
	ReplicaLeastBusy  = "least_busy"
)

func (r Routing) validate(add func(string, ...any)) {
	if r.HealthInterval < 50*time.Millisecond {
		add("HEALTH_CHECK_INTERVAL %s is below 50ms", r.HealthInterval)
	}
	if r.HealthTimeout <= 0 {
		add("HEALTH_CHECK_TIMEOUT must be positive")
	}
	if r.BanTime < 0 {
		add("REPLICA_BAN_TIME must not be negative")
	}
	if r.MaxReplicaLag <= 0 {
		add("MAX_REPLICA_LAG must be positive")
	}
	if r.MaxReplicaLagBytes <= 0 {
		add("MAX_REPLICA_LAG_BYTES must be positive")
	}
	if r.TwoPhaseTimeout < time.Second {
		add("TWO_PHASE_TIMEOUT %s is below 1s", r.TwoPhaseTimeout)
	}
	if r.TwoPhaseRecoveryInterval < 50*time.Millisecond {
		add("TWO_PHASE_RECOVERY_INTERVAL %s is below 50ms", r.TwoPhaseRecoveryInterval)
	}
	if r.FailoverWait < 0 {
		add("FAILOVER_WAIT must not be negative")
	}
	switch r.ReplicaSelection {
	case ReplicaRoundRobin, ReplicaLeastBusy:
	default:
		add("%s", fmt.Sprintf("REPLICA_SELECTION %q is not one of round_robin, least_busy", r.ReplicaSelection))
	}
}
