-- destination_fences: the fencing token of each destination's current
-- owner among the sender replicas (the lease it took in the NATS KV
-- bucket: the bucket's epoch and the create's revision), written when a
-- replica takes the lease, only upwards. Every write to a destination's
-- queue position (making a transaction, completing it, recording a
-- failure) runs in a transaction that first reads this row FOR SHARE and
-- checks the writer's token, so an owner whose lease moved cannot commit.
CREATE TABLE destination_fences (
    destination   TEXT PRIMARY KEY,
    epoch         BIGINT NOT NULL,
    token         BIGINT NOT NULL,
    owner         TEXT NOT NULL,
    -- how many times the destination changed owner (metrics)
    owner_changes BIGINT NOT NULL DEFAULT 0,
    acquired_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
