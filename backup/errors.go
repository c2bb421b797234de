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

// errorKinds names the sentinels on the worker protocol (ErrorKind,
// FromWorker): an error crossing the process boundary keeps its sentinel,
// so the admin API answers with the same HTTP status.
var errorKinds = []struct {
	kind string
	err  error
}{
	{"disabled", ErrDisabled},
	{"busy", ErrBusy},
	{"not_found", ErrNotFound},
	{"invalid_name", ErrInvalidName},
	{"exists", ErrExists},
	{"confirm_required", ErrConfirmRequired},
	{"corrupt", ErrCorrupt},
	{"shard_mismatch", ErrShardMismatch},
	{"no_shards", ErrNoShards},
}

// ErrorKind returns the protocol name of the sentinel err wraps, or "".
func ErrorKind(err error) string {
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return ""
}

// kindError is an error reported by the worker: its text is the worker's,
// and it wraps the sentinel its kind names (if any).
type kindError struct {
	msg      string
	sentinel error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.sentinel }

// errorFromWorker rebuilds an error reported by the worker.
func errorFromWorker(we *WorkerError) error {
	e := &kindError{msg: we.Message}
	for _, k := range errorKinds {
		if k.kind == we.Kind {
			e.sentinel = k.err
		}
	}
	if e.msg == "" {
		e.msg = "backup worker failed"
	}
	return e
}
