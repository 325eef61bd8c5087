package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// EnqueuePDU queues an event for each destination (once per destination:
// a repeat is ignored). For a destination catching up after a long
// outage, the room's older waiting PDUs go: only the newest of each room
// is sent, and the destination fetches what lies between with
// /get_missing_events.
func (t *Tx) EnqueuePDU(ctx context.Context, dests []string, roomID, eventID string, eventJSON []byte) error {
	if len(dests) == 0 {
		return nil
	}
	t.queued = true
	if _, err := t.tx.Exec(ctx, `INSERT INTO queue_pdus (destination, room_id, event_id, event_json)
		SELECT d, $2, $3, $4 FROM unnest($1::text[]) AS d
		ON CONFLICT (destination, event_id) DO NOTHING`, dests, roomID, eventID, eventJSON); err != nil {
		return err
	}
	_, err := t.tx.Exec(ctx, `DELETE FROM queue_pdus q USING destinations d
		WHERE d.destination = q.destination AND d.catch_up AND q.destination = ANY($1)
		  AND q.room_id = $2 AND q.txn_id IS NULL AND q.event_id <> $3`, dests, roomID, eventID)
	return err
}

// EDUKey says how an EDU relates to others waiting for the same
// destination: with a Key, a newer EDU of that key replaces a waiting one
// (Replace) or is dropped as a repeat of it (a message ID).
type EDUKey struct {
	Key     string
	Replace bool
}

// EnqueueEDU queues an EDU for each destination.
func (t *Tx) EnqueueEDU(ctx context.Context, dests []string, eduType string, key EDUKey, content []byte) error {
	if len(dests) == 0 {
		return nil
	}
	t.queued = true
	var coalesce *string
	if key.Key != "" {
		coalesce = &key.Key
	}
	action := `DO NOTHING`
	if key.Replace {
		action = `DO UPDATE SET content = EXCLUDED.content, enqueued_at = EXCLUDED.enqueued_at`
	}
	_, err := t.tx.Exec(ctx, `INSERT INTO queue_edus (destination, edu_type, coalesce_key, content)
		SELECT d, $2, $3, $4 FROM unnest($1::text[]) AS d
		ON CONFLICT (destination, coalesce_key) WHERE txn_id IS NULL AND coalesce_key IS NOT NULL `+action,
		dests, eduType, coalesce, content)
	return err
}

// QueuedPDU is a PDU of a transaction.
type QueuedPDU struct {
	EventID string
	RoomID  string
	JSON    []byte
}

// QueuedEDU is an EDU of a transaction.
type QueuedEDU struct {
	Type    string
	Content []byte
}

// Transaction is what one PUT /send/{txnId} carries, in queue order.
type Transaction struct {
	ID   string
	PDUs []QueuedPDU
	EDUs []QueuedEDU
	// TS is the transaction's origin_server_ts (ms), the same on every
	// attempt.
	TS int64
	// Retry: the transaction was sent before without an answer.
	Retry bool
}

// NextTransaction returns the destination's transaction in flight (sent
// before, not answered: it is sent again as it was), or makes a new one
// of the oldest waiting PDUs and EDUs, or returns nil when nothing waits.
//
// It and the other writes of the queue position (CompleteTransaction,
// RecordFailure) run only for the holder of the destination's fence.
func (s *Store) NextTransaction(ctx context.Context, dest string, f Fence, maxPDUs, maxEDUs int, now time.Time) (*Transaction, error) {
	var txn *Transaction
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := checkFence(ctx, tx, dest, f); err != nil {
			return err
		}
		var open string
		err := tx.QueryRow(ctx, `SELECT txn_id FROM queue_pdus WHERE destination = $1 AND txn_id IS NOT NULL
			UNION ALL SELECT txn_id FROM queue_edus WHERE destination = $1 AND txn_id IS NOT NULL LIMIT 1`, dest).Scan(&open)
		switch {
		case err == nil:
			t, err := loadTransaction(ctx, tx, dest, open)
			if err != nil {
				return err
			}
			t.Retry = true
			txn = t
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		var seq int64
		if err := tx.QueryRow(ctx, `SELECT nextval('txn_seq')`).Scan(&seq); err != nil {
			return err
		}
		id := fmt.Sprintf("%s.%d", s.token, seq)
		ts := now.UnixMilli()
		if _, err := tx.Exec(ctx, `UPDATE queue_pdus SET txn_id = $2, txn_ts = $4 WHERE seq IN (
			SELECT seq FROM queue_pdus WHERE destination = $1 AND txn_id IS NULL ORDER BY seq LIMIT $3)`, dest, id, maxPDUs, ts); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE queue_edus SET txn_id = $2, txn_ts = $4 WHERE seq IN (
			SELECT seq FROM queue_edus WHERE destination = $1 AND txn_id IS NULL ORDER BY seq LIMIT $3)`, dest, id, maxEDUs, ts); err != nil {
			return err
		}
		t, err := loadTransaction(ctx, tx, dest, id)
		if err != nil {
			return err
		}
		if len(t.PDUs) > 0 || len(t.EDUs) > 0 {
			txn = t
		}
		return nil
	})
	return txn, err
}

func loadTransaction(ctx context.Context, tx pgx.Tx, dest, id string) (*Transaction, error) {
	t := &Transaction{ID: id}
	rows, err := tx.Query(ctx, `SELECT event_id, room_id, event_json, txn_ts FROM queue_pdus
		WHERE destination = $1 AND txn_id = $2 ORDER BY seq`, dest, id)
	if err != nil {
		return nil, err
	}
	t.PDUs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueuedPDU, error) {
		var p QueuedPDU
		err := r.Scan(&p.EventID, &p.RoomID, &p.JSON, &t.TS)
		return p, err
	})
	if err != nil {
		return nil, err
	}
	rows, err = tx.Query(ctx, `SELECT edu_type, content, txn_ts FROM queue_edus
		WHERE destination = $1 AND txn_id = $2 ORDER BY seq`, dest, id)
	if err != nil {
		return nil, err
	}
	t.EDUs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueuedEDU, error) {
		var e QueuedEDU
		err := r.Scan(&e.Type, &e.Content, &t.TS)
		return e, err
	})
	return t, err
}

// DestinationState is a destination's retry state.
type DestinationState struct {
	Failures     int
	RetryAt      time.Time // zero: no wait
	FailingSince time.Time // zero: not failing
	CatchUp      bool
	LastSuccess  time.Time
}

// Destination returns a destination's retry state (zero when it has none).
func (s *Store) Destination(ctx context.Context, dest string) (DestinationState, error) {
	return destination(ctx, s.db, dest, false)
}

type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func destination(ctx context.Context, q rowQuerier, dest string, lock bool) (DestinationState, error) {
	var st DestinationState
	var retryAt, since, success *time.Time
	sql := `SELECT failures, retry_at, failing_since, catch_up, last_success FROM destinations WHERE destination = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	err := q.QueryRow(ctx, sql, dest).Scan(&st.Failures, &retryAt, &since, &st.CatchUp, &success)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if retryAt != nil {
		st.RetryAt = *retryAt
	}
	if since != nil {
		st.FailingSince = *since
	}
	if success != nil {
		st.LastSuccess = *success
	}
	return st, nil
}

// CompleteTransaction removes an answered transaction's rows and resets
// the destination's retry state. A destination that was catching up keeps
// only each room's newest waiting PDU and leaves catch-up.
func (s *Store) CompleteTransaction(ctx context.Context, dest string, f Fence, txnID string, now time.Time) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := checkFence(ctx, tx, dest, f); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM queue_pdus WHERE destination = $1 AND txn_id = $2`, dest, txnID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM queue_edus WHERE destination = $1 AND txn_id = $2`, dest, txnID); err != nil {
			return err
		}
		st, err := destination(ctx, tx, dest, true)
		if err != nil {
			return err
		}
		if st.CatchUp {
			if _, err := compact(ctx, tx, dest); err != nil {
				return err
			}
		}
		return answered(ctx, tx, dest, now)
	})
}

// Answered resets a destination's retry state: it answered a request.
func (s *Store) Answered(ctx context.Context, dest string, now time.Time) error {
	return answered(ctx, s.db, dest, now)
}

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func answered(ctx context.Context, tx execer, dest string, now time.Time) error {
	_, err := tx.Exec(ctx, `INSERT INTO destinations (destination, last_success) VALUES ($1, $2)
		ON CONFLICT (destination) DO UPDATE SET failures = 0, retry_at = NULL, failing_since = NULL,
			catch_up = FALSE, last_success = EXCLUDED.last_success`, dest, now)
	return err
}

// RecordFailure counts a failed attempt: the next one waits for
// backoff(failures), and a destination failing for catchUpAfter or longer
// switches to catch-up, which keeps only each room's newest waiting PDU.
func (s *Store) RecordFailure(ctx context.Context, dest string, f Fence, now time.Time, backoff func(failures int) time.Duration, catchUpAfter time.Duration) (DestinationState, error) {
	var st DestinationState
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := checkFence(ctx, tx, dest, f); err != nil {
			return err
		}
		var err error
		if st, err = destination(ctx, tx, dest, true); err != nil {
			return err
		}
		st.Failures++
		if st.FailingSince.IsZero() {
			st.FailingSince = now
		}
		st.RetryAt = now.Add(backoff(st.Failures))
		if !st.CatchUp && now.Sub(st.FailingSince) >= catchUpAfter {
			st.CatchUp = true
		}
		if st.CatchUp {
			if _, err := compact(ctx, tx, dest); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO destinations (destination, failures, retry_at, failing_since, catch_up)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (destination) DO UPDATE SET failures = EXCLUDED.failures, retry_at = EXCLUDED.retry_at,
				failing_since = EXCLUDED.failing_since, catch_up = EXCLUDED.catch_up`,
			dest, st.Failures, st.RetryAt, st.FailingSince, st.CatchUp)
		return err
	})
	return st, err
}

// compact keeps only the newest waiting PDU of each room (rows of the
// transaction in flight stay: it is retried as it was).
func compact(ctx context.Context, tx pgx.Tx, dest string) (int64, error) {
	tag, err := tx.Exec(ctx, `DELETE FROM queue_pdus q WHERE q.destination = $1 AND q.txn_id IS NULL
		AND EXISTS (SELECT 1 FROM queue_pdus n WHERE n.destination = q.destination AND n.room_id = q.room_id
			AND n.txn_id IS NULL AND n.seq > q.seq)`, dest)
	return tag.RowsAffected(), err
}

// Bounded is what EnforceBounds did.
type Bounded struct {
	// CatchUp: the PDU queue was over its bound and the destination
	// switched to catch-up.
	CatchUp     bool
	DroppedPDUs int64
	DroppedEDUs int64
}

// EnforceBounds keeps a destination's waiting rows within maxPDUs and
// maxEDUs: past maxPDUs the destination switches to catch-up (each room's
// newest PDU), and then, and for EDUs, the oldest waiting rows beyond the
// bound are dropped.
func (s *Store) EnforceBounds(ctx context.Context, dest string, maxPDUs, maxEDUs int) (Bounded, error) {
	var b Bounded
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var pdus, edus int
		if err := tx.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM queue_pdus WHERE destination = $1 AND txn_id IS NULL),
			(SELECT count(*) FROM queue_edus WHERE destination = $1 AND txn_id IS NULL)`, dest).Scan(&pdus, &edus); err != nil {
			return err
		}
		if pdus > maxPDUs {
			st, err := destination(ctx, tx, dest, true)
			if err != nil {
				return err
			}
			n, err := compact(ctx, tx, dest)
			if err != nil {
				return err
			}
			b.DroppedPDUs += n
			if !st.CatchUp {
				b.CatchUp = true
				if _, err := tx.Exec(ctx, `INSERT INTO destinations (destination, catch_up) VALUES ($1, TRUE)
					ON CONFLICT (destination) DO UPDATE SET catch_up = TRUE`, dest); err != nil {
					return err
				}
			}
			tag, err := tx.Exec(ctx, `DELETE FROM queue_pdus WHERE seq IN (
				SELECT seq FROM queue_pdus WHERE destination = $1 AND txn_id IS NULL
				ORDER BY seq DESC OFFSET $2)`, dest, maxPDUs)
			if err != nil {
				return err
			}
			b.DroppedPDUs += tag.RowsAffected()
		}
		if edus > maxEDUs {
			tag, err := tx.Exec(ctx, `DELETE FROM queue_edus WHERE seq IN (
				SELECT seq FROM queue_edus WHERE destination = $1 AND txn_id IS NULL
				ORDER BY seq DESC OFFSET $2)`, dest, maxEDUs)
			if err != nil {
				return err
			}
			b.DroppedEDUs = tag.RowsAffected()
		}
		return nil
	})
	return b, err
}

// PendingDestinations are the destinations with queued rows.
func (s *Store) PendingDestinations(ctx context.Context) ([]string, error) {
	return collectStrings(ctx, s.db, `SELECT destination FROM queue_pdus UNION SELECT destination FROM queue_edus`)
}

// QueueStats is one destination's queue, for metrics.
type QueueStats struct {
	Destination string
	PDUs        int64
	EDUs        int64
	Oldest      time.Time // zero when empty
	State       DestinationState
	// OwnerChanges counts the times the destination changed owner among
	// the sender replicas.
	OwnerChanges int64
}

// Stats returns every destination that has queued rows or a retry state.
func (s *Store) Stats(ctx context.Context) ([]QueueStats, error) {
	rows, err := s.db.Query(ctx, `WITH p AS (SELECT destination, count(*) n, min(enqueued_at) oldest FROM queue_pdus GROUP BY destination),
		e AS (SELECT destination, count(*) n, min(enqueued_at) oldest FROM queue_edus GROUP BY destination),
		d AS (SELECT destination FROM p UNION SELECT destination FROM e UNION SELECT destination FROM destinations)
		SELECT d.destination, coalesce(p.n, 0), coalesce(e.n, 0), least(p.oldest, e.oldest),
			coalesce(x.failures, 0), x.retry_at, x.failing_since, coalesce(x.catch_up, FALSE), x.last_success,
			coalesce(f.owner_changes, 0)
		FROM d LEFT JOIN p USING (destination) LEFT JOIN e USING (destination) LEFT JOIN destinations x USING (destination)
			LEFT JOIN destination_fences f USING (destination)
		ORDER BY d.destination`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueStats, error) {
		var q QueueStats
		var oldest, retryAt, since, success *time.Time
		err := r.Scan(&q.Destination, &q.PDUs, &q.EDUs, &oldest, &q.State.Failures, &retryAt, &since, &q.State.CatchUp, &success, &q.OwnerChanges)
		for _, p := range []struct {
			src *time.Time
			dst *time.Time
		}{{oldest, &q.Oldest}, {retryAt, &q.State.RetryAt}, {since, &q.State.FailingSince}, {success, &q.State.LastSuccess}} {
			if p.src != nil {
				*p.dst = *p.src
			}
		}
		return q, err
	})
}
