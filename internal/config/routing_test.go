package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
)

var routingDefaults = config.Routing{
	HealthInterval: time.Second, HealthTimeout: 3 * time.Second, BanTime: 10 * time.Second,
	MaxReplicaLag: 10 * time.Second, MaxReplicaLagBytes: 16 << 20, ReplicaSelection: "round_robin",
	TwoPhaseTimeout: time.Minute, TwoPhaseRecoveryInterval: 10 * time.Second, FailoverWait: 15 * time.Second,
}

func TestRoutingVariablesLoad(t *testing.T) {
	cfg, err := config.Load(map[string]string{
		"ADMIN_ADDR":     "127.0.0.1:8001",
		"SHARD_MAP_FILE": "/etc/brownie/shardmap.yaml", "HEALTH_CHECK_INTERVAL": "250ms", "HEALTH_CHECK_TIMEOUT": "1s",
		"REPLICA_BAN_TIME": "3s", "MAX_REPLICA_LAG": "5s", "MAX_REPLICA_LAG_BYTES": "1024", "REPLICA_SELECTION": "least_busy",
		"TWO_PHASE_TIMEOUT": "30s", "TWO_PHASE_RECOVERY_INTERVAL": "2s", "FAILOVER_WAIT": "4s",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := config.Routing{ShardMapFile: "/etc/brownie/shardmap.yaml", HealthInterval: 250 * time.Millisecond,
		HealthTimeout: time.Second, BanTime: 3 * time.Second, MaxReplicaLag: 5 * time.Second, MaxReplicaLagBytes: 1024,
		ReplicaSelection: "least_busy", TwoPhaseTimeout: 30 * time.Second, TwoPhaseRecoveryInterval: 2 * time.Second,
		FailoverWait: 4 * time.Second}
	if cfg.Routing != want {
		t.Fatalf("got %+v, want %+v", cfg.Routing, want)
	}
}

func TestBadRoutingVariablesAreAllReported(t *testing.T) {
	_, err := config.Load(map[string]string{
		"ADMIN_ADDR":            "127.0.0.1:8001",
		"HEALTH_CHECK_INTERVAL": "1ms", "HEALTH_CHECK_TIMEOUT": "0s", "MAX_REPLICA_LAG": "0s",
		"MAX_REPLICA_LAG_BYTES": "-1", "REPLICA_SELECTION": "random",
		"TWO_PHASE_TIMEOUT": "10ms", "TWO_PHASE_RECOVERY_INTERVAL": "1ms", "FAILOVER_WAIT": "-1s",
	})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, v := range []string{"HEALTH_CHECK_INTERVAL", "HEALTH_CHECK_TIMEOUT", "MAX_REPLICA_LAG ", "MAX_REPLICA_LAG_BYTES", "REPLICA_SELECTION", "TWO_PHASE_TIMEOUT", "TWO_PHASE_RECOVERY_INTERVAL", "FAILOVER_WAIT"} {
		if !strings.Contains(err.Error(), v) {
			t.Errorf("error does not name %s: %v", v, err)
		}
	}
}
