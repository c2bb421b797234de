-- 03_sharded.sql: what a database needs to be one shard of several.
--
-- Run as a superuser, connected to the brownie_metadata database, after
-- 02_sidecar.sql. Idempotent.
--
-- A replicated table has every row on every shard, a sharded table each row
-- on one shard, so a foreign key from a replicated table to a sharded one
-- cannot hold: users.team_id names a team whose row lives on one shard only.
-- The sidecar writes a user on every shard in the same transaction as the
-- rest of the request; the application keeps checking that the team exists,
-- as it does today before it writes. Foreign keys the other way (incidents
-- to users, teams to organizations) stay: their targets are on every shard.

BEGIN;

ALTER TABLE public.users DROP CONSTRAINT IF EXISTS users_team_id_fkey;

COMMIT;
