package store

import (
	"context"
	"errors"
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

// SnapshotRow returns one snapshot row (a base's entries are the whole
// state).
func (q *Queries) SnapshotRow(ctx context.Context, nid int64) (Snapshot, error) {
	s := Snapshot{NID: nid}
	err := q.db.QueryRow(ctx, `SELECT room_nid, COALESCE(parent_nid, 0), chain_len, state_key_nids, event_nids
		FROM state_snapshots WHERE snapshot_nid = $1`, nid).Scan(&s.RoomNID, &s.Parent, &s.ChainLen, &s.StateKeyNIDs, &s.EventNIDs)
	if errors.Is(err, pgx.ErrNoRows) {
		return Snapshot{}, fmt.Errorf("snapshot %d: %w", nid, ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot row: %w", err)
	}
	return s, nil
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
	// Kind is what the row publishes (OutboxNew, OutboxBackfill,
	// OutboxOutOfRoom); StrippedState is an out-of-room event's stripped
	// state as a JSON array ("" for none).
	Kind          int16
	StrippedState string
}

// Outbox kinds (the kind column).
const (
	OutboxNew       int16 = 0
	OutboxBackfill  int16 = 1
	OutboxOutOfRoom int16 = 2
)

// Pending is what the publisher reads in one round trip.
type Pending struct {
	// Entries are outbox entries after the watermark, in order.
	Entries []OutboxEntry
	// RedactedBy maps an entry's event NID to the applied redaction that
	// redacted it; Targets maps an entry that is an applied redaction to
	// its (stored) target.
	RedactedBy, Targets map[int64]int64
}

// OutboxCursor says which outbox rows a publisher round reads: those
// whose transactions committed after Prev (a pg_snapshot in text form; ""
// for none yet: then every row after the old position watermark) and by
// Cur ("" for the current snapshot, which the round returns), with a
// position after After (paging through one such set).
type OutboxCursor struct {
	Prev, Cur string
	After     int64
}

// PendingOutbox returns up to limit outbox entries of cur, in position
// order, with the applied redactions that involve them, and the snapshot
// the entries were taken up to (cur.Cur, or the current one). When
// saveMark is set it first stores cur.Prev as the published snapshot, in
// the same round trip.
func (q *Queries) PendingOutbox(ctx context.Context, cur OutboxCursor, limit int, saveMark bool) (Pending, string, error) {
	out := Pending{RedactedBy: map[int64]int64{}, Targets: map[int64]int64{}}
	b := &pgx.Batch{}
	if saveMark && cur.Prev != "" {
		// The batch is one (implicit) transaction, and this write is its
		// only one. Its commit does not wait for the WAL to reach the
		// disk (set_config, local to the transaction, in the statement
		// rather than one of its own): a watermark lost to an operating
		// system crash only makes the publisher send again what JetStream
		// drops as duplicates, and every later durable commit (the
		// pruner's deletes, which read it) flushes it first. Waiting
		// would put a WAL flush between every commit and its publication.
		b.Queue(`UPDATE publish_watermark SET snapshot = $1::pg_snapshot
			WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL`, cur.Prev)
	}
	var snapCur, snapPrev *string
	if cur.Cur != "" {
		snapCur = &cur.Cur
	}
	// Rows of transactions visible in the snapshot s and not in the
	// previous one ($2; rows below its xmin are all visible in it).
	newRows := `o.txid >= pg_snapshot_xmin($2::pg_snapshot) AND NOT pg_visible_in_snapshot(o.txid, $2::pg_snapshot)`
	if cur.Prev == "" {
		// ($2 is NULL here; it is named so that both forms take the
		// same parameters.)
		newRows = `$2::text IS NULL AND o.stream_pos > (SELECT published_up_to FROM publish_watermark)`
	} else {
		snapPrev = &cur.Prev
	}
	// The txid range (xmax of the snapshot as upper bound) keeps the
	// planner on the txid index even with a generic plan: without it, a
	// generic plan walks the primary key in position order from $3,
	// through the whole outbox, to fill the LIMIT.
	rowsOf := func(snapshot string) string {
		return `SELECT o.stream_pos, o.room_nid, o.event_nid, o.added_state_nids, o.removed_state_nids, o.txn_device_id, o.txn_id,
				o.kind, o.stripped_state
			FROM outbox o WHERE o.txid < pg_snapshot_xmax(` + snapshot + `) AND pg_visible_in_snapshot(o.txid, ` + snapshot + `)
			AND ` + newRows + ` AND o.stream_pos > $3`
	}
	var snapshot string
	b.Queue(`WITH cur AS (SELECT COALESCE($1::pg_snapshot, pg_current_snapshot()) AS s)
		SELECT cur.s::text, o.* FROM cur LEFT JOIN LATERAL (`+rowsOf("cur.s")+`
			ORDER BY o.stream_pos LIMIT $4) o ON TRUE
		ORDER BY o.stream_pos`, snapCur, snapPrev, cur.After, limit).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var pos, roomNID, eventNID *int64
			var e OutboxEntry
			var dev, txn, stripped *string
			var kind *int16
			if err := rows.Scan(&snapshot, &pos, &roomNID, &eventNID, &e.AddedStateNIDs, &e.RemovedStateNIDs, &dev, &txn,
				&kind, &stripped); err != nil {
				return err
			}
			if pos == nil {
				continue // no rows: only the snapshot
			}
			e.StreamPos, e.RoomNID, e.EventNID, e.Kind = *pos, *roomNID, *eventNID, *kind
			if stripped != nil {
				e.StrippedState = *stripped
			}
			if dev != nil && txn != nil {
				e.HasTxn, e.TxnDeviceID, e.TxnID = true, *dev, *txn
			}
			out.Entries = append(out.Entries, e)
		}
		return rows.Err()
	})
	// This statement's snapshot is at least as new as the first one's, so
	// it covers every entry above (and maybe more, which is harmless).
	b.Queue(`WITH o AS (`+rowsOf("COALESCE($1::pg_snapshot, pg_current_snapshot())")+`)
		SELECT r.redaction_nid, e.event_nid FROM redactions r
		JOIN events e ON e.event_id = r.target_event_id AND e.room_nid = r.room_nid
		WHERE r.applied AND (r.redaction_nid IN (SELECT event_nid FROM o) OR e.event_nid IN (SELECT event_nid FROM o))
		ORDER BY r.redaction_nid`, snapCur, snapPrev, cur.After).Query(func(rows pgx.Rows) error {
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
		return Pending{}, "", fmt.Errorf("pending outbox: %w", err)
	}
	return out, snapshot, nil
}

// PruneOutbox deletes up to limit outbox rows that are on JetStream: those
// of transactions visible in the saved published snapshot, which is saved
// only once every row visible in it was acknowledged. Visibility, not the
// snapshot's xmin: transaction IDs and snapshots are cluster-wide, so any
// write transaction running then, in any database of the cluster, holds
// xmin back, and rows between xmin and the rows committed before the
// snapshot would stay until a later one is saved, which an idle publisher
// never does. A row of a transaction still running then (not visible) is
// kept until a snapshot in which it is visible is saved, as are the rows a
// restart would republish. Before the first saved snapshot (NULL) nothing
// is deleted. It returns how many rows it deleted.
func (q *Queries) PruneOutbox(ctx context.Context, limit int) (int64, error) {
	// The bound below the snapshot's xmax is an index condition on txid
	// (the snapshot comes from a scalar subquery, computed first), so the
	// walk stops there rather than reading the rows committed since; the
	// rows below it that are not visible are the few of transactions
	// running when the snapshot was taken.
	tag, err := q.db.Exec(ctx, `DELETE FROM outbox WHERE stream_pos = ANY(ARRAY(
		SELECT stream_pos FROM outbox
		WHERE txid < pg_snapshot_xmax((SELECT snapshot FROM publish_watermark))
		AND pg_visible_in_snapshot(txid, (SELECT snapshot FROM publish_watermark))
		ORDER BY txid LIMIT $1))`, limit)
	if err != nil {
		return 0, fmt.Errorf("prune outbox: %w", err)
	}
	return tag.RowsAffected(), nil
}

// PublishedSnapshot returns the stored published snapshot ("" for none).
func (q *Queries) PublishedSnapshot(ctx context.Context) (string, error) {
	var s *string
	if err := q.db.QueryRow(ctx, `SELECT snapshot::text FROM publish_watermark`).Scan(&s); err != nil {
		return "", err
	}
	if s == nil {
		return "", nil
	}
	return *s, nil
}
