package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Erase records that userID's events are to be served redacted to users
// who join their rooms from now on (at the latest stored position), and
// deletes the user's other data that is not in events: account data (push
// rules and tags included), filters, forgotten rooms, notifications
// and read positions (unread counts are counted from those). An erasure already recorded keeps its
// position. The account itself is deactivated by Deactivate.
func (s *Store) Erase(ctx context.Context, userID string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO erased_users (user_id, pos, erased_ts)
			VALUES ($1, (SELECT COALESCE(MAX(pos), 0) FROM sync_events), $2) ON CONFLICT (user_id) DO NOTHING`,
			userID, time.Now().UnixMilli()); err != nil {
			return fmt.Errorf("record erasure: %w", err)
		}
		for _, q := range []string{
			`DELETE FROM account_data WHERE user_id = $1`,
			`DELETE FROM filters WHERE user_id = $1`,
			`DELETE FROM forgotten_rooms WHERE user_id = $1`,
			`DELETE FROM push_receipts WHERE user_id = $1`,
			`DELETE FROM own_reads WHERE user_id = $1`,
		} {
			if _, err := tx.Exec(ctx, q, userID); err != nil {
				return fmt.Errorf("erase %s: %w", userID, err)
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM notifications WHERE user_key = $1 AND user_id = $2`, userKey(userID), userID); err != nil {
			return fmt.Errorf("erase %s: notifications: %w", userID, err)
		}
		return nil
	})
}

// ErasedUsers returns every erased user with the position of the erasure.
func (r Reader) ErasedUsers(ctx context.Context) (map[string]int64, error) {
	rows, err := r.q.Query(ctx, `SELECT user_id, pos FROM erased_users`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var u string
		var pos int64
		if err := rows.Scan(&u, &pos); err != nil {
			return nil, err
		}
		out[u] = pos
	}
	return out, rows.Err()
}
