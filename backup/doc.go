// Package backup is the sidecar's side of logical backups of every shard
// of the Brownie cluster (pg_dump custom format, one object per shard plus
// a manifest) on local disk, S3, GCS or Azure Blob: the Service the admin
// API and the CLI use, its types and errors, and the Manager that
// implements it.
//
// The Manager keeps the schedule, runs one backup or restore at a time,
// keeps the metrics and the status, and runs every operation in a backup
// worker process (brownie-backup, package backup/worker) over the
// protocol of WorkerRequest. The storage drivers, their cloud SDKs and
// pgx live in the worker only: this package must not import them, so that
// a pod that is not running a backup does not carry them in memory.
// Scheduled backups are elected across sidecars by a Postgres session
// advisory lock (AdvisoryLockKey) that the worker takes on the first
// shard's primary.
//
// The package owns the worker processes it starts (stopped when their
// operation's context ends, killed if the sidecar dies), never reads the
// process environment, never logs key material, and returns errors whose
// text is safe to show to an operator.
package backup
