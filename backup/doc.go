// Package backup creates, lists and restores logical backups of every shard
// of the Brownie cluster (pg_dump custom format, one object per shard plus a
// manifest) on local disk, S3, GCS or Azure Blob through gocloud.dev/blob.
//
// Layout: under the destination's prefix each backup is a "directory"
// named brownie-YYYYMMDDTHHMMSSZ (its start time, or its slot for scheduled
// backups) holding one <shard>.dump per shard and manifest.json, written
// last. A backup without a manifest is incomplete: List and Get ignore it,
// Restore refuses it and retention removes it once it is a day old.
//
// The package owns the objects under the destination prefix whose names
// have that form, the pg_dump and pg_restore child processes it starts, the
// private temporary directories holding the client certificate for them,
// and, for restores, the databases it creates. It never touches other
// objects under the prefix, never reads the process environment (the
// configuration and every endpoint are passed in), never logs key
// material, and returns errors whose text is safe to show to an operator.
//
// The admin API and the CLI depend on the Service interface; Manager is the
// implementation. Scheduled backups are elected across sidecars with a
// Locker, by default a Postgres session advisory lock on the first shard's
// primary (PGAdvisoryLocker).
package backup
