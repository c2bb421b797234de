-- 00_roles.sql: roles of the Brownie metadata database.
--
-- Run as a superuser, connected to the "postgres" database. Idempotent: it
-- only creates what is missing and never changes an existing role.
--
-- The database itself is not created here because CREATE DATABASE cannot run
-- inside a DO block or a transaction; the Go side (pgcluster
-- EnsureBrownieDatabase) checks pg_database and then runs
--   CREATE DATABASE brownie_metadata OWNER "brownie-fastapi-server";
--
-- "brownie-fastapi-server" is the role the FastAPI server (and the sidecar on
-- its behalf) logs in as. It has no password: TCP clients authenticate with a
-- TLS client certificate whose CN is the role name (pg_hba "cert" method).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'brownie-fastapi-server') THEN
        CREATE ROLE "brownie-fastapi-server" LOGIN CREATEDB NOCREATEROLE;
    END IF;
END
$$;
