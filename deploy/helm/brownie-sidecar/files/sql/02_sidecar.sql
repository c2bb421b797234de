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

SET LOCAL ROLE "brownie-fastapi-server";

CREATE TABLE IF NOT EXISTS brownie_sidecar.commit_log (
    gid          text        PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now()
);

COMMIT;
