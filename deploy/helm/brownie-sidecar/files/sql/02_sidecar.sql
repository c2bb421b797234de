-- 02_sidecar.sql: what the sidecar itself keeps on every shard primary.
--
-- Run as a superuser, connected to the brownie_metadata database, after
-- 01_schema.sql. Idempotent. Owned by "brownie-fastapi-server", the role the
-- sidecar logs in as.
--
-- brownie_sidecar.commit_log holds the commit decisions of writes spanning
-- shards (two-phase commit). The sidecar inserts a transaction's row on its
-- first ("anchor") shard inside that shard's part of the transaction, so the
-- row is visible exactly when the anchor committed: after a crash, a part
-- still prepared on another shard is committed when the row exists and
-- rolled back when it does not. The sidecar deletes rows once no shard
-- holds their transaction prepared. Shards also need
-- max_prepared_transactions > 0 (deploy/postgres/postgresql.conf).

BEGIN;

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS brownie_sidecar AUTHORIZATION "brownie-fastapi-server";

-- brownie_sidecar.replication_state() lets the sidecar's health checks see
-- replication without pg_read_all_stats (which would also show every
-- session's query text): on a primary one row per walsender ('standby',
-- its application_name, state, sync_state), on a standby one row ('self',
-- the application_name its walreceiver gives the primary, status). It runs
-- with the rights of its owner, the superuser running this file, and shows
-- nothing else. The sidecar reads it for shards marked synchronous in the
-- shard map, to move writes after a failure only to a host that was a
-- synchronous standby of the failed primary.
CREATE OR REPLACE FUNCTION brownie_sidecar.replication_state()
RETURNS TABLE (kind text, name text, state text, sync_state text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog
AS $fn$
    SELECT 'standby', application_name, state, sync_state FROM pg_stat_replication
    UNION ALL
    SELECT 'self',
           coalesce(substring(conninfo FROM '(?:^|\s)application_name=(\S+)'),
                    substring(conninfo FROM '(?:^|\s)fallback_application_name=(\S+)'),
                    nullif(current_setting('cluster_name'), ''),
                    'walreceiver'),
           status, NULL
    FROM pg_stat_wal_receiver
$fn$;
REVOKE ALL ON FUNCTION brownie_sidecar.replication_state() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION brownie_sidecar.replication_state() TO "brownie-fastapi-server";

SET LOCAL ROLE "brownie-fastapi-server";

CREATE TABLE IF NOT EXISTS brownie_sidecar.commit_log (
    gid          text        PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now()
);

COMMIT;
