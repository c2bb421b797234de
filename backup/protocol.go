package backup

import (
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// The worker protocol. The sidecar runs every backup operation in a child
// process, the backup worker (brownie-backup, package backup/worker), so
// that the storage drivers and their cloud SDKs are linked into that
// program only and cost nothing in a pod that is not running a backup.
//
// One process serves one operation:
//
//   - The sidecar starts "brownie-backup serve" with no other argument and
//     an environment without any variable of the sidecar's configuration
//     (the clouds' default credential chains still find theirs), and
//     writes one WorkerRequest as a JSON line on its stdin. The request
//     carries the configuration, storage secrets included: secrets travel
//     only through that pipe, never through arguments or the environment.
//   - The worker writes JSON lines (WorkerMessage) on its stdout. A Call
//     asks the sidecar for the shards' current primaries ("shards") or the
//     current client certificate ("certs"); the sidecar answers with one
//     WorkerReply line on stdin. The certificate is asked for only when a
//     connection needs it and is written by the worker to a private 0700
//     directory (key 0600) removed when pg_dump or pg_restore exits.
//   - The last line is the Result; then the worker exits 0. Any other exit
//     without a Result is a failure of the operation.
//   - The worker's stderr is its zap log, one JSON object per line, which
//     the sidecar logs again through its own logger (progress such as
//     "shard dumped" included).
//   - Cancelling the operation sends SIGTERM: the worker cancels its work,
//     deletes a partial backup, answers with a Result carrying the error
//     and exits; after WorkerGrace it is killed. The worker is also killed
//     if the sidecar dies (Linux parent-death signal).

// Worker operations, the values of WorkerRequest.Op.
const (
	OpCreate    = "create"
	OpScheduled = "scheduled"
	OpList      = "list"
	OpGet       = "get"
	OpRestore   = "restore"
)

// Worker calls, the values of WorkerMessage.Call.
const (
	CallShards = "shards"
	CallCerts  = "certs"
)

// Scheduled-run outcomes, WorkerResult.Outcome of OpScheduled and the
// values of the result label of brownie_sidecar_backup_scheduled_runs_total.
const (
	RunCreated       = "created"
	RunSkippedLocked = "skipped_locked"
	RunSkippedExists = "skipped_exists"
	RunFailed        = "failed"
)

// WorkerRequest is the first line the sidecar writes to the worker.
type WorkerRequest struct {
	Op     string        `json:"op"`
	Config config.Backup `json:"config"`
	// Database, User and SSLMode are DB_NAME, DB_USER and DB_SSL_MODE.
	Database string `json:"database"`
	User     string `json:"user"`
	SSLMode  string `json:"ssl_mode"`
	// Version is the sidecar version written into manifests.
	Version string `json:"version"`
	// LockKey is the advisory lock key of the backup election; 0 is
	// AdvisoryLockKey.
	LockKey int64 `json:"lock_key,omitempty"`
	// Now is the sidecar's clock when the operation started; the worker's
	// clock is Now advanced by its own monotonic clock.
	Now time.Time `json:"now"`
	// Slot is the scheduled slot of OpScheduled.
	Slot time.Time `json:"slot,omitzero"`
	// Name is the backup of OpGet.
	Name string `json:"name,omitempty"`
	// Restore is the request of OpRestore, already checked by the sidecar.
	Restore *RestoreRequest `json:"restore,omitempty"`
	// PGDump and PGRestore are the programs the sidecar found (in
	// BACKUP_PG_BIN_DIR or on its PATH).
	PGDump    string `json:"pg_dump"`
	PGRestore string `json:"pg_restore"`
	// LogLevel is the least level the worker logs ("debug", "info"...).
	LogLevel string `json:"log_level,omitempty"`
}

// WorkerMessage is one line the worker writes: a Call or the Result.
type WorkerMessage struct {
	Call   string        `json:"call,omitempty"`
	Result *WorkerResult `json:"result,omitempty"`
}

// WorkerReply answers a Call. Error, when set, makes the call fail with
// that text.
type WorkerReply struct {
	Shards  []Shard `json:"shards,omitempty"`
	CertPEM string  `json:"cert_pem,omitempty"`
	KeyPEM  string  `json:"key_pem,omitempty"`
	CAPEM   string  `json:"ca_pem,omitempty"`
	Error   string  `json:"error,omitempty"`
}

// WorkerResult is the outcome of one operation.
type WorkerResult struct {
	Manifest  *Manifest      `json:"manifest,omitempty"`
	Manifests []Manifest     `json:"manifests,omitempty"`
	Restore   *RestoreResult `json:"restore,omitempty"`
	// Outcome is OpScheduled's: RunCreated, RunSkippedLocked,
	// RunSkippedExists or RunFailed.
	Outcome string `json:"outcome,omitempty"`
	// RetentionDeleted counts the backups retention deleted after a
	// successful backup.
	RetentionDeleted int          `json:"retention_deleted,omitempty"`
	Error            *WorkerError `json:"error,omitempty"`
}

// WorkerError is a failed operation.
type WorkerError struct {
	// Kind names the sentinel error (ErrorKind), "" for others.
	Kind    string `json:"kind,omitempty"`
	Message string `json:"message"`
	// Failure is set when a backup failed (as opposed to being refused:
	// busy, exists), so that the sidecar counts it in
	// brownie_sidecar_backup_failures_total and /status.
	Failure bool `json:"failure,omitempty"`
	// Backup names the failed backup, when known.
	Backup string `json:"backup,omitempty"`
}

// NewWorkerError describes err for the protocol.
func NewWorkerError(err error, failure bool, backup string) *WorkerError {
	return &WorkerError{Kind: ErrorKind(err), Message: err.Error(), Failure: failure, Backup: backup}
}

// AdvisoryLockKey is the key of the session advisory lock that elects the
// sidecar running a backup, taken in the Brownie database on the first
// shard's primary: the ASCII bytes of "brownbkp" read as a big-endian
// int64.
const AdvisoryLockKey int64 = 0x62726f776e626b70 // "brownbkp"
