package backup

import "errors"

// Errors returned by Service methods, possibly wrapped: test with errors.Is.
// Their text, and that of every error the package returns, is safe to show
// to an operator (no key material, credentials or connection secrets).
var (
	// ErrDisabled: backups are not configured (BACKUP_PROVIDER is empty).
	ErrDisabled = errors.New("backups are not configured")
	// ErrBusy: a backup or restore is already running on this sidecar, or
	// another sidecar holds the backup lock. Retry later.
	ErrBusy = errors.New("a backup or restore is already running")
	// ErrNotFound: no complete backup has that name.
	ErrNotFound = errors.New("backup not found")
	// ErrInvalidName: a backup or database name is malformed.
	ErrInvalidName = errors.New("invalid name")
	// ErrExists: a backup of that name, or the restore's target database,
	// already exists.
	ErrExists = errors.New("already exists")
	// ErrConfirmRequired: an in-place restore needs Confirm equal to the
	// backup name. Nothing was touched.
	ErrConfirmRequired = errors.New(`restoring in place needs "confirm" equal to the backup name`)
	// ErrCorrupt: an object does not match its manifest (size or SHA-256).
	// Nothing was restored.
	ErrCorrupt = errors.New("backup object does not match its manifest")
	// ErrShardMismatch: the backup's shards are not the cluster's current
	// shards. Nothing was restored.
	ErrShardMismatch = errors.New("backup shards do not match the cluster's shards")
	// ErrNoShards: the cluster has no shard to back up.
	ErrNoShards = errors.New("no shards to back up")
)
