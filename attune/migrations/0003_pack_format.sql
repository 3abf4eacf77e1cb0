-- Columns the reference's pack registration writes for the full pack and action format.
ALTER TABLE attune.pack
    ADD COLUMN IF NOT EXISTS dependencies       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS worker_selector    jsonb  NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS worker_tolerations jsonb  NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN IF NOT EXISTS worker_affinity    jsonb  NOT NULL DEFAULT '{}'::jsonb;

ALTER TABLE attune.action
    ADD COLUMN IF NOT EXISTS enabled                    boolean NOT NULL DEFAULT true,
    ADD COLUMN IF NOT EXISTS runtime_version_constraint text,
    ADD COLUMN IF NOT EXISTS required_worker_runtimes   jsonb   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS worker_selector            jsonb   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS worker_tolerations         jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN IF NOT EXISTS worker_affinity            jsonb   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS accesses_mcp               boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS default_execution_permission_set_refs text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS reference_visibility       text,
    ADD COLUMN IF NOT EXISTS reference_allowed_pack_refs text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS log_retention_policy       text,
    ADD COLUMN IF NOT EXISTS log_retention_limit        integer,
    ADD COLUMN IF NOT EXISTS artifact_retention_policy  text,
    ADD COLUMN IF NOT EXISTS artifact_retention_limit   integer;
