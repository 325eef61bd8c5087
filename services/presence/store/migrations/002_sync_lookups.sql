-- Incremental /sync asks for what changed since its position, so the
-- lookups start from the change: the joins after a position (newly sharing
-- users) need an index on joined_pos, as changed presence rows have one on
-- pos. Before, both lookups joined every membership of every room of the
-- requester: 20 ms per /sync for a user in 300 rooms of 100 members, paid
-- whenever anything ephemeral changed anywhere on the server (#5).
CREATE INDEX memberships_joined_pos ON memberships (joined_pos) WHERE membership = 'join';
