package backup

import (
	"context"
	"time"
)

// Manifest describes one backup. It is stored next to the shard objects as
// manifest.json and is the unit List and Get return.
type Manifest struct {
	// Name is unique and sortable by time, e.g. "brownie-20261127T020000Z".
	Name           string          `json:"name"`
	StartedAt      time.Time       `json:"started_at"`
	FinishedAt     time.Time       `json:"finished_at"`
	SidecarVersion string          `json:"sidecar_version"`
	Database       string          `json:"database"`
	Shards         []ShardManifest `json:"shards"`
	// TotalBytes is the sum of the shard objects' sizes.
	TotalBytes int64 `json:"total_bytes"`
	// Trigger is "manual" (Create) or "scheduled".
	Trigger string `json:"trigger,omitempty"`
	// Format is the shard objects' format: "pg_dump-custom".
	Format string `json:"format,omitempty"`
}

// ShardManifest describes one shard's dump object.
type ShardManifest struct {
	Shard string `json:"shard"`
	// Object is the object key relative to the backup's prefix.
	Object string `json:"object"`
	Bytes  int64  `json:"bytes"`
	// SHA256 is the hex SHA-256 of the object's bytes.
	SHA256        string `json:"sha256"`
	ServerVersion string `json:"server_version"`
	// SchemaVersion is alembic_version.version_num, "" when absent.
	SchemaVersion string    `json:"schema_version"`
	StartedAt     time.Time `json:"started_at"`
	FinishedAt    time.Time `json:"finished_at"`
}

// RestoreRequest is the body of POST /backup/restore.
type RestoreRequest struct {
	BackupName string `json:"backup_name"`
	// TargetDatabase, when set, is a new database created on every shard's
	// primary and restored into; the live database is not touched.
	TargetDatabase string `json:"target_database,omitempty"`
	// Confirm must equal BackupName to restore in place (into the live
	// database) when TargetDatabase is empty.
	Confirm string `json:"confirm,omitempty"`
}

// RestoreResult reports a restore, shard by shard.
type RestoreResult struct {
	BackupName string               `json:"backup_name"`
	Database   string               `json:"database"`
	Shards     []ShardRestoreResult `json:"shards"`
	Duration   time.Duration        `json:"duration_ns"`
	OK         bool                 `json:"ok"`
}

// ShardRestoreResult is one shard's part of a restore.
type ShardRestoreResult struct {
	Shard    string        `json:"shard"`
	OK       bool          `json:"ok"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Status is what /status shows about backups.
type Status struct {
	Provider       string     `json:"provider"`
	Destination    string     `json:"destination"`
	Schedule       string     `json:"schedule"`
	RetentionDays  int        `json:"retention_days"`
	Running        bool       `json:"running"`
	LastSuccess    *Manifest  `json:"last_success,omitempty"`
	LastFailureAt  *time.Time `json:"last_failure_at,omitempty"`
	LastFailure    string     `json:"last_failure,omitempty"`
	NextScheduleAt *time.Time `json:"next_scheduled_at,omitempty"`
}

// Service is what the admin API and the CLI use. Implementations are safe
// for concurrent use; Create refuses to run while another backup of the same
// sidecar runs (ErrBusy).
type Service interface {
	Create(ctx context.Context) (*Manifest, error)
	List(ctx context.Context) ([]Manifest, error)
	Get(ctx context.Context, name string) (*Manifest, error)
	Restore(ctx context.Context, req RestoreRequest) (*RestoreResult, error)
	Status() Status
}
