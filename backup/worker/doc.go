// Package worker is the backup worker: the program (cmd/brownie-backup)
// the sidecar starts for each backup, restore and listing, and the Engine
// that performs them. It links the storage drivers (gocloud.dev/blob over
// local disk, S3, GCS and Azure Blob, with each cloud's SDK) and pgx, which
// the sidecar itself does not, so that a pod pays for them only while it
// runs a backup.
//
// Layout of a destination: under its prefix each backup is a "directory"
// named brownie-YYYYMMDDTHHMMSSZ (its start time, or its slot for
// scheduled backups) holding one <shard>.dump per shard and manifest.json,
// written last. A backup without a manifest is incomplete: List and Get
// ignore it, Restore refuses it and retention removes it once it is a day
// old.
//
// The package owns the objects under the destination prefix whose names
// have that form, the pg_dump and pg_restore child processes it starts, the
// private temporary directories holding the client certificate for them,
// and, for restores, the databases it creates. It never touches other
// objects under the prefix, never reads the process environment (the
// configuration and every endpoint come in the request; only the clouds'
// default credential chains read theirs), never logs key material, and
// returns errors whose text is safe to show to an operator. Serve speaks
// the protocol described in package backup (WorkerRequest).
package worker
