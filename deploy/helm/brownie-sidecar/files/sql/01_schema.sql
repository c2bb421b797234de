-- 01_schema.sql: the Brownie metadata schema, Alembic revision d607e412e7b0
-- ("initial migration", brownie-metadata-database
-- alembic/versions/d607e412e7b0_initial_migration.py) as plain SQL.
--
-- Run as a superuser, connected to the brownie_metadata database, after
-- 00_roles.sql. Everything is created by "brownie-fastapi-server" so that the
-- role owns the schema, as it does when the original runs Alembic as that
-- role.
--
-- Plain SQL (no psql meta-commands), so any client can apply it. Safe to
-- re-run: every object is created only if it is missing and the version row
-- is inserted only into an empty alembic_version, all in one transaction. It
-- never alters objects that already exist.
--
-- Faithful to the migration, including its quirks: ids have no default (the
-- client generates UUIDs), only created_at/updated_at have server defaults,
-- enum labels are the upper-case Python enum names, every tenant table carries
-- both org_id (indexed, no FK) and organization_id (FK), json not jsonb, and
-- constraint names are the PostgreSQL defaults.

BEGIN;

SET LOCAL client_min_messages = warning;

-- PostgreSQL 15 no longer grants CREATE on schema public to everyone.
GRANT USAGE, CREATE ON SCHEMA public TO "brownie-fastapi-server";

SET LOCAL ROLE "brownie-fastapi-server";

-- Enum types. CREATE TYPE has no IF NOT EXISTS.
DO $$
BEGIN
    IF to_regtype('public.userrole') IS NULL THEN
        CREATE TYPE public.userrole AS ENUM ('ADMIN', 'MEMBER', 'VIEWER');
    END IF;
    IF to_regtype('public.incidentstatus') IS NULL THEN
        CREATE TYPE public.incidentstatus AS ENUM ('OPEN', 'IN_PROGRESS', 'RESOLVED', 'CLOSED', 'CANCELLED');
    END IF;
    IF to_regtype('public.incidentpriority') IS NULL THEN
        CREATE TYPE public.incidentpriority AS ENUM ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL');
    END IF;
    IF to_regtype('public.agenttype') IS NULL THEN
        CREATE TYPE public.agenttype AS ENUM ('INCIDENT_RESPONSE', 'MONITORING', 'ANALYSIS', 'NOTIFICATION', 'CUSTOM');
    END IF;
    IF to_regtype('public.configtype') IS NULL THEN
        CREATE TYPE public.configtype AS ENUM ('ORGANIZATION', 'TEAM', 'ALERT', 'AGENT', 'GLOBAL');
    END IF;
    IF to_regtype('public.configstatus') IS NULL THEN
        CREATE TYPE public.configstatus AS ENUM ('DRAFT', 'ACTIVE', 'DEPRECATED', 'ARCHIVED');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.organizations (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    name varchar(255) NOT NULL,
    slug varchar(100) NOT NULL,
    description text,
    is_active boolean NOT NULL,
    config_yaml text,
    config_json json,
    config_version varchar(50),
    settings json,
    max_teams integer NOT NULL,
    max_users_per_team integer NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (name),
    UNIQUE (slug)
);
CREATE INDEX IF NOT EXISTS ix_organizations_slug ON public.organizations (slug);

CREATE TABLE IF NOT EXISTS public.teams (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    org_id uuid NOT NULL,
    created_by uuid,
    updated_by uuid,
    name varchar(255) NOT NULL,
    slug varchar(100) NOT NULL,
    description text,
    is_active boolean NOT NULL,
    config_yaml text,
    config_json json,
    config_version varchar(50),
    settings json,
    permissions json,
    organization_id uuid NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (organization_id) REFERENCES public.organizations (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_teams_org_id ON public.teams (org_id);
CREATE INDEX IF NOT EXISTS ix_teams_organization_id ON public.teams (organization_id);

CREATE TABLE IF NOT EXISTS public.users (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    org_id uuid NOT NULL,
    created_by uuid,
    updated_by uuid,
    deleted_at timestamp with time zone,
    deleted_by uuid,
    email varchar(255) NOT NULL,
    username varchar(100) NOT NULL,
    full_name varchar(255),
    avatar_url varchar(500),
    password_hash varchar(255),
    is_active boolean NOT NULL,
    is_verified boolean NOT NULL,
    oidc_subject varchar(255),
    oidc_provider varchar(100),
    team_id uuid NOT NULL,
    role public.userrole NOT NULL,
    preferences json,
    organization_id uuid NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (email),
    UNIQUE (username),
    UNIQUE (oidc_subject),
    FOREIGN KEY (team_id) REFERENCES public.teams (id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id) REFERENCES public.organizations (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_users_org_id ON public.users (org_id);
CREATE INDEX IF NOT EXISTS ix_users_email ON public.users (email);
CREATE INDEX IF NOT EXISTS ix_users_username ON public.users (username);
CREATE INDEX IF NOT EXISTS ix_users_oidc_subject ON public.users (oidc_subject);
CREATE INDEX IF NOT EXISTS ix_users_team_id ON public.users (team_id);
CREATE INDEX IF NOT EXISTS ix_users_organization_id ON public.users (organization_id);

CREATE TABLE IF NOT EXISTS public.incidents (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    org_id uuid NOT NULL,
    created_by uuid,
    updated_by uuid,
    version integer NOT NULL,
    idempotency_key varchar(255),
    title varchar(500) NOT NULL,
    description text,
    status public.incidentstatus NOT NULL,
    priority public.incidentpriority NOT NULL,
    assigned_to uuid,
    started_at timestamp with time zone,
    resolved_at timestamp with time zone,
    closed_at timestamp with time zone,
    tags json,
    incident_metadata json,
    response_time_minutes integer,
    resolution_time_minutes integer,
    team_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (idempotency_key),
    FOREIGN KEY (created_by) REFERENCES public.users (id) ON DELETE SET NULL,
    FOREIGN KEY (assigned_to) REFERENCES public.users (id) ON DELETE SET NULL,
    FOREIGN KEY (team_id) REFERENCES public.teams (id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id) REFERENCES public.organizations (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_incidents_org_id ON public.incidents (org_id);
CREATE INDEX IF NOT EXISTS ix_incidents_created_by ON public.incidents (created_by);
CREATE INDEX IF NOT EXISTS ix_incidents_idempotency_key ON public.incidents (idempotency_key);
CREATE INDEX IF NOT EXISTS ix_incidents_assigned_to ON public.incidents (assigned_to);
CREATE INDEX IF NOT EXISTS ix_incidents_team_id ON public.incidents (team_id);
CREATE INDEX IF NOT EXISTS ix_incidents_organization_id ON public.incidents (organization_id);

CREATE TABLE IF NOT EXISTS public.agent_configs (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    org_id uuid NOT NULL,
    created_by uuid,
    updated_by uuid,
    version integer NOT NULL,
    name varchar(255) NOT NULL,
    description text,
    agent_type public.agenttype NOT NULL,
    is_active boolean NOT NULL,
    config_yaml text,
    config_json json,
    config_version varchar(50),
    config json NOT NULL,
    execution_timeout_seconds integer NOT NULL,
    max_retries integer NOT NULL,
    retry_delay_seconds integer NOT NULL,
    triggers json,
    conditions json,
    tags json,
    config_metadata json,
    team_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (team_id) REFERENCES public.teams (id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id) REFERENCES public.organizations (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_agent_configs_org_id ON public.agent_configs (org_id);
CREATE INDEX IF NOT EXISTS ix_agent_configs_team_id ON public.agent_configs (team_id);
CREATE INDEX IF NOT EXISTS ix_agent_configs_organization_id ON public.agent_configs (organization_id);

CREATE TABLE IF NOT EXISTS public.stats (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    org_id uuid NOT NULL,
    metric_name varchar(255) NOT NULL,
    metric_type varchar(50) NOT NULL,
    value double precision NOT NULL,
    count integer,
    "timestamp" timestamp with time zone NOT NULL,
    time_window varchar(50),
    labels json,
    description text,
    unit varchar(50),
    team_id uuid,
    organization_id uuid NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (team_id) REFERENCES public.teams (id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id) REFERENCES public.organizations (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_stats_org_id ON public.stats (org_id);
CREATE INDEX IF NOT EXISTS ix_stats_metric_name ON public.stats (metric_name);
CREATE INDEX IF NOT EXISTS ix_stats_timestamp ON public.stats ("timestamp");
CREATE INDEX IF NOT EXISTS ix_stats_team_id ON public.stats (team_id);
CREATE INDEX IF NOT EXISTS ix_stats_organization_id ON public.stats (organization_id);

CREATE TABLE IF NOT EXISTS public.configs (
    id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    org_id uuid NOT NULL,
    created_by uuid,
    updated_by uuid,
    version integer NOT NULL,
    name varchar(255) NOT NULL,
    description text,
    config_type public.configtype NOT NULL,
    status public.configstatus NOT NULL,
    name_pattern varchar(500),
    severity_pattern varchar(500),
    team_pattern varchar(500),
    config_yaml text,
    config_json json,
    config_version varchar(50),
    priority integer NOT NULL,
    is_global boolean NOT NULL,
    is_active boolean NOT NULL,
    tags json,
    config_metadata json,
    team_id uuid,
    organization_id uuid NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (team_id) REFERENCES public.teams (id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id) REFERENCES public.organizations (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_configs_org_id ON public.configs (org_id);
CREATE INDEX IF NOT EXISTS ix_configs_config_type ON public.configs (config_type);
CREATE INDEX IF NOT EXISTS ix_configs_status ON public.configs (status);
CREATE INDEX IF NOT EXISTS ix_configs_priority ON public.configs (priority);
CREATE INDEX IF NOT EXISTS ix_configs_is_active ON public.configs (is_active);
CREATE INDEX IF NOT EXISTS ix_configs_team_id ON public.configs (team_id);
CREATE INDEX IF NOT EXISTS ix_configs_organization_id ON public.configs (organization_id);

-- Alembic's bookkeeping table, as Alembic itself creates it.
CREATE TABLE IF NOT EXISTS public.alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO public.alembic_version (version_num)
SELECT 'd607e412e7b0'
WHERE NOT EXISTS (SELECT 1 FROM public.alembic_version);

COMMIT;
