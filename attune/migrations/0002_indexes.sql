-- Indexes for the queries a running deployment makes all the time: the executor
-- scanning for work by status, a worker finding its orphans after a restart, the
-- API listing recent executions, cascades through foreign keys.

SET LOCAL search_path = attune, public;

CREATE INDEX IF NOT EXISTS execution_status_worker_idx ON attune.execution (status, worker);
CREATE INDEX IF NOT EXISTS execution_worker_running_idx ON attune.execution (worker)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS execution_action_idx ON attune.execution (action);
CREATE INDEX IF NOT EXISTS execution_parent_idx ON attune.execution (parent)
    WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS execution_created_idx ON attune.execution (created DESC);

CREATE INDEX IF NOT EXISTS action_pack_idx ON attune.action (pack);
CREATE INDEX IF NOT EXISTS action_runtime_idx ON attune.action (runtime);
CREATE INDEX IF NOT EXISTS runtime_pack_idx ON attune.runtime (pack);
CREATE INDEX IF NOT EXISTS runtime_lower_name_idx ON attune.runtime (lower(name));

CREATE INDEX IF NOT EXISTS worker_status_heartbeat_idx ON attune.worker (status, last_heartbeat);

CREATE INDEX IF NOT EXISTS key_owner_pack_idx ON attune.key (owner_pack);
CREATE INDEX IF NOT EXISTS key_owner_action_idx ON attune.key (owner_action);
