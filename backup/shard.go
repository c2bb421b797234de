package backup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Shard is one shard's current primary, as the sidecar's shard map and
// health checks see it when a backup or restore starts.
type Shard struct {
	// Name identifies the shard in manifests and object names; it must be
	// made of letters, digits, '.', '_' and '-'.
	Name string `json:"name"`
	// Host and Port address the primary.
	Host string `json:"host"`
	Port int    `json:"port"`
	// ServerName, when set, is the name verify-full checks in the server's
	// certificate instead of Host.
	ServerName string `json:"server_name,omitempty"`
}

// CertsFunc returns the sidecar's current client certificate, its private
// key and the CA bundle that verifies the servers, all PEM-encoded.
type CertsFunc func() (certPEM, keyPEM, caPEM []byte, err error)

// CheckShards returns shards if every name is usable in object names and
// unique; ErrNoShards when there is none.
func CheckShards(shards []Shard) ([]Shard, error) {
	if len(shards) == 0 {
		return nil, ErrNoShards
	}
	seen := map[string]bool{}
	for _, s := range shards {
		if !ValidShardName(s.Name) {
			return nil, fmt.Errorf("shard name %q cannot name a backup object", s.Name)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("shard %q appears twice", s.Name)
		}
		seen[s.Name] = true
	}
	return shards, nil
}

// PGTool finds a PostgreSQL client program in dir, or on PATH when dir is
// empty.
func PGTool(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			return "", fmt.Errorf("%s not found in BACKUP_PG_BIN_DIR %s", name, dir)
		}
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errors.New(name + " not found on PATH; install the PostgreSQL client tools (postgresql-client) or set BACKUP_PG_BIN_DIR")
	}
	return p, nil
}
