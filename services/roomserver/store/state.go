package store

import (
	"context"
	"fmt"
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

// OutboxAfter returns up to limit entries with stream_pos > after, in order.
func (q *Queries) OutboxAfter(ctx context.Context, after int64, limit int) ([]OutboxEntry, error) {
	rows, err := q.db.Query(ctx, `SELECT stream_pos, room_nid, event_nid, added_state_nids, removed_state_nids,
			txn_device_id, txn_id
		FROM outbox WHERE stream_pos > $1 ORDER BY stream_pos LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	defer rows.Close()
	var out []OutboxEntry
	for rows.Next() {
		var e OutboxEntry
		var dev, txn *string
		if err := rows.Scan(&e.StreamPos, &e.RoomNID, &e.EventNID, &e.AddedStateNIDs, &e.RemovedStateNIDs, &dev, &txn); err != nil {
			return nil, err
		}
		if dev != nil && txn != nil {
			e.HasTxn, e.TxnDeviceID, e.TxnID = true, *dev, *txn
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// PublishedUpTo returns the publish watermark.
func (q *Queries) PublishedUpTo(ctx context.Context) (int64, error) {
	var pos int64
	err := q.db.QueryRow(ctx, `SELECT published_up_to FROM publish_watermark`).Scan(&pos)
	return pos, err
}

// SetPublishedUpTo moves the watermark forward (never back, so replicas
// racing to publish cannot rewind it).
func (q *Queries) SetPublishedUpTo(ctx context.Context, pos int64) error {
	_, err := q.db.Exec(ctx, `UPDATE publish_watermark SET published_up_to = GREATEST(published_up_to, $1)`, pos)
	return err
}
