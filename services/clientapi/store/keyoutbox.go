package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Device deletions and renames for the key-server (migration 038): each
// is queued in the transaction that changes the device and sent after the
// commit (internal/keys/outbox.go).

// KeyServerOp is a queued device deletion or rename.
type KeyServerOp struct {
	ID        int64
	UserID    string
	Delete    bool     // else a rename
	DeviceIDs []string // the deleted devices, or the renamed one
	// DisplayName is the new name of a renamed device (nil: none).
	DisplayName *string
}

// KeyServerUsers lists the users with queued operations.
func (s *Store) KeyServerUsers(ctx context.Context) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT user_id FROM key_server_outbox`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// SendKeyServerOps hands a user's queued operations to send, in the order
// they were queued, and forgets each that send took. One sender per user
// at a time (a transaction-level advisory lock), so a rename and a
// deletion of one device reach the key-server in order. It stops at the
// first failure and returns it.
func (s *Store) SendKeyServerOps(ctx context.Context, userID string, send func(KeyServerOp) error) error {
	var sendErr error
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.clientapi.key_server_outbox'), hashtext($1))`, userID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, user_id, op = 'delete', device_ids, display_name FROM key_server_outbox WHERE user_id = $1 ORDER BY id`, userID)
		if err != nil {
			return err
		}
		ops, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (KeyServerOp, error) {
			var op KeyServerOp
			err := row.Scan(&op.ID, &op.UserID, &op.Delete, &op.DeviceIDs, &op.DisplayName)
			return op, err
		})
		if err != nil {
			return err
		}
		var sent []int64
		for _, op := range ops {
			if sendErr = send(op); sendErr != nil {
				break
			}
			sent = append(sent, op.ID)
		}
		if len(sent) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM key_server_outbox WHERE id = ANY($1)`, sent)
		return err
	})
	if err != nil {
		return err
	}
	return sendErr
}
