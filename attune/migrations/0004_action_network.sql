-- `network: egress` of an action (or its pack): this worker's own column, not the
-- reference's. 'none' keeps the loopback-only sandbox; 'egress' needs a worker whose
-- registered capabilities say "egress": true (docs/network.md).
ALTER TABLE attune.action
    ADD COLUMN IF NOT EXISTS network text NOT NULL DEFAULT 'none'
        CHECK (network IN ('none', 'egress'));
