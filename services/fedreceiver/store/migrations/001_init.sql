-- The federation-receiver's schema: received transactions, for the
-- spec's idempotency per (origin, txnId) across every receiver replica.
--
-- A request claims its transaction by inserting the row (claimed_by, the
-- claiming replica's instance ID; claimed_at); a concurrent request for
-- the same transaction finds the row and waits for the response. The
-- claimer writes the response (done_at set) when done, or deletes the row
-- when processing failed as a whole, so a retry processes it again. A
-- claim that never finished (its replica died) may be taken over after
-- transaction_stale. Answered rows are kept for transaction_retention.
CREATE TABLE transactions (
    origin     TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    response   BYTEA,
    done_at    TIMESTAMPTZ,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX transactions_done_at ON transactions (done_at) WHERE done_at IS NOT NULL;
