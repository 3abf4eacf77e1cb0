-- Attune schema: the tables and enums the worker shares with the executor and API
-- (docs/protocol.md §5). Objects are created only if missing so that this file can also run
-- against a database where another Attune service already created some of them.
-- Columns the reference services write but the worker does not read are nullable or
-- defaulted, so their inserts keep working.

CREATE SCHEMA IF NOT EXISTS attune;
SET LOCAL search_path = attune, public;

DO $$
BEGIN
    IF to_regtype('attune.execution_status_enum') IS NULL THEN
        CREATE TYPE attune.execution_status_enum AS ENUM (
            'requested', 'scheduling', 'scheduled', 'running', 'completed',
            'failed', 'canceling', 'cancelled', 'timeout', 'abandoned');
    END IF;
    IF to_regtype('attune.worker_type_enum') IS NULL THEN
        CREATE TYPE attune.worker_type_enum AS ENUM ('local', 'remote', 'container');
    END IF;
    IF to_regtype('attune.worker_role_enum') IS NULL THEN
        CREATE TYPE attune.worker_role_enum AS ENUM ('action', 'sensor', 'hybrid');
    END IF;
    IF to_regtype('attune.worker_status_enum') IS NULL THEN
        CREATE TYPE attune.worker_status_enum AS ENUM ('active', 'inactive', 'busy', 'error');
    END IF;
    IF to_regtype('attune.owner_type_enum') IS NULL THEN
        CREATE TYPE attune.owner_type_enum AS ENUM (
            'system', 'identity', 'pack', 'action', 'sensor');
    END IF;
END
$$;

-- Keeps `updated` honest for writers that forget it.
CREATE OR REPLACE FUNCTION attune.touch_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS attune.pack (
    id           bigserial PRIMARY KEY,
    ref          text NOT NULL UNIQUE CHECK (ref ~ '^[a-z][a-z0-9_-]*$'),
    label        text NOT NULL,
    description  text,
    version      text NOT NULL,
    conf_schema  jsonb NOT NULL DEFAULT '{}'::jsonb,
    config       jsonb NOT NULL DEFAULT '{}'::jsonb,
    meta         jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags         text[] NOT NULL DEFAULT '{}',
    runtime_deps text[] NOT NULL DEFAULT '{}',
    is_standard  boolean NOT NULL DEFAULT false,
    created      timestamptz NOT NULL DEFAULT now(),
    updated      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS attune.runtime (
    id               bigserial PRIMARY KEY,
    ref              text NOT NULL UNIQUE,
    pack             bigint REFERENCES attune.pack (id) ON DELETE CASCADE,
    pack_ref         text,
    description      text,
    name             text NOT NULL,
    aliases          text[] NOT NULL DEFAULT '{}',
    distributions    jsonb NOT NULL DEFAULT '{}'::jsonb,
    installation     jsonb,
    execution_config jsonb NOT NULL DEFAULT '{}'::jsonb,
    created          timestamptz NOT NULL DEFAULT now(),
    updated          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS attune.action (
    id                 bigserial PRIMARY KEY,
    ref                text NOT NULL UNIQUE CHECK (ref = lower(ref) AND position('.' IN ref) > 1),
    pack               bigint NOT NULL REFERENCES attune.pack (id) ON DELETE CASCADE,
    pack_ref           text NOT NULL,
    label              text NOT NULL,
    description        text,
    entrypoint         text NOT NULL,
    runtime            bigint REFERENCES attune.runtime (id),
    is_adhoc           boolean NOT NULL DEFAULT false,
    timeout_seconds    integer,
    parameter_delivery text NOT NULL DEFAULT 'stdin'
        CHECK (parameter_delivery IN ('stdin', 'file')),
    parameter_format   text NOT NULL DEFAULT 'json'
        CHECK (parameter_format IN ('dotenv', 'json', 'yaml')),
    output_format      text NOT NULL DEFAULT 'text'
        CHECK (output_format IN ('text', 'json', 'yaml', 'jsonl')),
    param_schema       jsonb,
    out_schema         jsonb,
    tags               text[] NOT NULL DEFAULT '{}',
    created            timestamptz NOT NULL DEFAULT now(),
    updated            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS attune.worker (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    worker_type    attune.worker_type_enum NOT NULL DEFAULT 'local',
    worker_role    attune.worker_role_enum NOT NULL DEFAULT 'action',
    runtime        bigint REFERENCES attune.runtime (id) ON DELETE SET NULL,
    host           text,
    port           integer CHECK (port IS NULL OR port BETWEEN 0 AND 65535),
    status         attune.worker_status_enum NOT NULL DEFAULT 'inactive',
    capabilities   jsonb NOT NULL DEFAULT '{}'::jsonb,
    meta           jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_heartbeat timestamptz,
    created        timestamptz NOT NULL DEFAULT now(),
    updated        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS attune.execution (
    id              bigserial PRIMARY KEY,
    action          bigint REFERENCES attune.action (id) ON DELETE SET NULL,
    action_ref      text NOT NULL,
    config          jsonb,
    env_vars        jsonb,
    parent          bigint REFERENCES attune.execution (id) ON DELETE SET NULL,
    enforcement     bigint,
    executor        bigint,
    worker          bigint REFERENCES attune.worker (id) ON DELETE SET NULL,
    status          attune.execution_status_enum NOT NULL DEFAULT 'requested',
    result          jsonb,
    workflow_task   jsonb,
    started_at      timestamptz,
    timeout_seconds integer,
    created         timestamptz NOT NULL DEFAULT now(),
    updated         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS attune.key (
    id                  bigserial PRIMARY KEY,
    ref                 text NOT NULL UNIQUE,
    owner_type          attune.owner_type_enum NOT NULL DEFAULT 'system',
    owner               text,
    owner_identity      bigint,
    owner_pack          bigint REFERENCES attune.pack (id) ON DELETE CASCADE,
    owner_pack_ref      text,
    owner_action        bigint REFERENCES attune.action (id) ON DELETE CASCADE,
    owner_action_ref    text,
    owner_sensor        bigint,
    owner_sensor_ref    text,
    name                text NOT NULL,
    encrypted           boolean NOT NULL DEFAULT false,
    encryption_key_hash text,
    value               jsonb NOT NULL,
    created             timestamptz NOT NULL DEFAULT now(),
    updated             timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT encrypted OR encryption_key_hash IS NOT NULL)
);

CREATE TABLE IF NOT EXISTS attune.execution_secret_value (
    id                  bigserial PRIMARY KEY,
    entity_type         text NOT NULL,
    entity_id           bigint NOT NULL,
    json_path           text NOT NULL CHECK (json_path = '' OR json_path LIKE '/%'),
    encrypted_value     jsonb NOT NULL,
    encryption_key_hash text NOT NULL,
    created             timestamptz NOT NULL DEFAULT now(),
    updated             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (entity_type, entity_id, json_path)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pack', 'runtime', 'action', 'worker', 'execution', 'key',
                             'execution_secret_value']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                       WHERE tgname = t || '_touch_updated'
                         AND tgrelid = ('attune.' || quote_ident(t))::regclass) THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON attune.%I '
                           'FOR EACH ROW EXECUTE FUNCTION attune.touch_updated()',
                           t || '_touch_updated', t);
        END IF;
    END LOOP;
END
$$;
