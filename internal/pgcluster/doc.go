// Package pgcluster creates and runs one real PostgreSQL cluster — a primary
// or a streaming replica — on a loopback port, for the dev command and for
// integration tests.
//
// It owns the cluster home directory it is given (Dir/data, Dir/run,
// Dir/postgres.log), the files it writes into the data directory
// (sidecar.conf, pg_hba.conf, the copied certificates) and the server
// processes it starts through pg_ctl. It drives the PostgreSQL command-line
// tools (initdb, pg_ctl, pg_basebackup, psql) and links no database driver.
// It must not be imported by the sidecar's runtime packages (proxy, pool,
// router, tls): production Postgres is never managed by the sidecar.
//
// Clusters listen on 127.0.0.1 only. TCP clients must present a TLS client
// certificate whose CN equals the role name (see HBA); setup work such as
// Exec uses the Unix socket with trust authentication as the superuser
// "postgres".
//
// PostgreSQL refuses to run as root. When the process is root, server
// commands run as the OS user "postgres" and the directories they need are
// chowned to it.
package pgcluster
