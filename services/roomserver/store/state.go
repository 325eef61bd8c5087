package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Snapshot is one row of state_snapshots: a delta on top of Parent, or a
// full base snapshot when Parent is 0.
type Snapshot struct {
	NID          int64
	RoomNID      int64
	Parent       int64
	ChainLen     int
	StateKeyNIDs []int64
	EventNIDs    []int64 // 0 removes the key
}

// InsertSnapshot stores a snapshot row and returns its numeric ID.
func (q *Queries) InsertSnapshot(ctx context.Context, s Snapshot) (int64, error) {
	var parent *int64
	if s.Parent != 0 {
		parent = &s.Parent
	}
	if s.StateKeyNIDs == nil {
		s.StateKeyNIDs, s.EventNIDs = []int64{}, []int64{}
	}
	var nid int64
	err := q.db.QueryRow(ctx, `INSERT INTO state_snapshots (room_nid, parent_nid, chain_len, state_key_nids, event_nids)
		VALUES ($1, $2, $3, $4, $5) RETURNING snapshot_nid`,
		s.RoomNID, parent, s.ChainLen, s.StateKeyNIDs, s.EventNIDs).Scan(&nid)
	if err != nil {
		return 0, fmt.Errorf("insert snapshot: %w", err)
	}
	return nid, nil
}

// SnapshotChain returns the snapshot and its ancestors up to and including
// its base, base first.
func (q *Queries) SnapshotChain(ctx context.Context, nid int64) ([]Snapshot, error) {
	rows, err := q.db.Query(ctx, `WITH RECURSIVE chain AS (
			SELECT snapshot_nid, room_nid, parent_nid, chain_len, state_key_nids, event_nids
			FROM state_snapshots WHERE snapshot_nid = $1
			UNION ALL
			SELECT s.snapshot_nid, s.room_nid, s.parent_nid, s.chain_len, s.state_key_nids, s.event_nids
			FROM state_snapshots s JOIN chain c ON s.snapshot_nid = c.parent_nid
		) SELECT snapshot_nid, room_nid, COALESCE(parent_nid, 0), chain_len, state_key_nids, event_nids
		FROM chain ORDER BY chain_len`, nid)
	if err != nil {
		return nil, fmt.Errorf("snapshot chain: %w", err)
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		var s Snapshot
		if err := rows.Scan(&s.NID, &s.RoomNID, &s.Parent, &s.ChainLen, &s.StateKeyNIDs, &s.EventNIDs); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("snapshot %d: %w", nid, ErrNotFound)
	}
	return out, nil
}

// OutboxEntry is one event waiting to be (or already) published.
type OutboxEntry struct {
	StreamPos        int64
	RoomNID          int64
	EventNID         int64
	AddedStateNIDs   []int64
	RemovedStateNIDs []int64
	TxnDeviceID      string
	TxnID            string
	HasTxn           bool
}

// Pending is what the publisher reads in one round trip.
type Pending struct {
	// Entries are outbox entries after the watermark, in order.
	Entries []OutboxEntry
	// RedactedBy maps an entry's event NID to the applied redaction that
	// redacted it; Targets maps an entry that is an applied redaction to
	// its (stored) target.
	RedactedBy, Targets map[int64]int64
}

// PendingOutbox returns up to limit outbox entries after max(after, the
// stored watermark), with the applied redactions that involve them. When
// saveMark is set it first moves the stored watermark to after, in the
// same round trip.
func (q *Queries) PendingOutbox(ctx context.Context, after int64, limit int, saveMark bool) (Pending, error) {
	out := Pending{RedactedBy: map[int64]int64{}, Targets: map[int64]int64{}}
	b := &pgx.Batch{}
	if saveMark {
		b.Queue(`UPDATE publish_watermark SET published_up_to = GREATEST(published_up_to, $1)`, after)
	}
	const pending = `SELECT stream_pos, room_nid, event_nid, added_state_nids, removed_state_nids, txn_device_id, txn_id
		FROM outbox WHERE stream_pos > GREATEST($1, (SELECT published_up_to FROM publish_watermark))
		ORDER BY stream_pos LIMIT $2`
	b.Queue(pending, after, limit).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var e OutboxEntry
			var dev, txn *string
			if err := rows.Scan(&e.StreamPos, &e.RoomNID, &e.EventNID, &e.AddedStateNIDs, &e.RemovedStateNIDs, &dev, &txn); err != nil {
				return err
			}
			if dev != nil && txn != nil {
				e.HasTxn, e.TxnDeviceID, e.TxnID = true, *dev, *txn
			}
			out.Entries = append(out.Entries, e)
		}
		return rows.Err()
	})
	b.Queue(`WITH o AS (`+pending+`)
		SELECT r.redaction_nid, e.event_nid FROM redactions r
		JOIN events e ON e.event_id = r.target_event_id AND e.room_nid = r.room_nid
		WHERE r.applied AND (r.redaction_nid IN (SELECT event_nid FROM o) OR e.event_nid IN (SELECT event_nid FROM o))
		ORDER BY r.redaction_nid`, after, limit).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var red, target int64
			if err := rows.Scan(&red, &target); err != nil {
				return err
			}
			if _, ok := out.RedactedBy[target]; !ok {
				out.RedactedBy[target] = red
			}
			out.Targets[red] = target
		}
		return rows.Err()
	})
	if err := q.db.SendBatch(ctx, b).Close(); err != nil {
		return Pending{}, fmt.Errorf("pending outbox: %w", err)
	}
	return out, nil
}

// SetPublishedUpTo moves the watermark forward (never back, so replicas
// racing to publish cannot rewind it).
func (q *Queries) SetPublishedUpTo(ctx context.Context, pos int64) error {
	_, err := q.db.Exec(ctx, `UPDATE publish_watermark SET published_up_to = GREATEST(published_up_to, $1)`, pos)
	return err
}
