package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Receipt is one stored receipt (or m.fully_read marker).
type Receipt struct {
	RoomID   string
	Type     string
	UserID   string
	ThreadID string
	EventID  string
	TS       int64
	Origin   string
	Pos      int64
}

// PutReceipt stores a receipt, replacing the user's previous one of the
// same type and thread, under a new position.
func (s *Store) PutReceipt(ctx context.Context, r Receipt) (int64, error) {
	return s.withPosition(ctx, func(tx pgx.Tx, pos int64) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, origin, pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE
			SET event_id = EXCLUDED.event_id, ts = EXCLUDED.ts, origin = EXCLUDED.origin, pos = EXCLUDED.pos`,
			r.RoomID, r.Type, r.UserID, r.ThreadID, r.EventID, r.TS, r.Origin, pos)
		return err
	})
}

// Receipts returns the receipts of rooms with after < pos <= upto, in
// position order.
func (s *Store) Receipts(ctx context.Context, rooms []string, after, upto int64) ([]Receipt, error) {
	if len(rooms) == 0 {
		return nil, nil
	}
	rows, err := s.db.Query(ctx, `
		SELECT room_id, receipt_type, user_id, thread_id, event_id, ts, origin, pos
		FROM receipts WHERE room_id = ANY($1) AND pos > $2 AND pos <= $3
		ORDER BY pos`, rooms, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Receipt, error) {
		var r Receipt
		err := row.Scan(&r.RoomID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &r.TS, &r.Origin, &r.Pos)
		return r, err
	})
}
