package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ErrFenced: a newer owner of the destination holds its fencing token;
// the caller's lease moved and it must stop.
var ErrFenced = errors.New("fenced: the destination has a newer owner")

// Fence is a destination owner's fencing token (see package lease).
type Fence struct {
	Epoch int64
	Token int64
	Owner string
}

// TakeFence records f as the destination's current fencing token, if it
// is newer than the one recorded (else ErrFenced).
//
// It waits at most lockTimeout for the previous owner's transaction in
// progress (a frozen owner's is ended by idle_in_transaction_session_timeout).
func (s *Store) TakeFence(ctx context.Context, dest string, f Fence) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
			return err
		}
		return takeFence(ctx, tx, dest, f)
	})
}

func takeFence(ctx context.Context, tx pgx.Tx, dest string, f Fence) error {
	tag, err := tx.Exec(ctx, `INSERT INTO destination_fences (destination, epoch, token, owner)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (destination) DO UPDATE SET epoch = EXCLUDED.epoch, token = EXCLUDED.token,
			owner = EXCLUDED.owner, acquired_at = now(),
			owner_changes = destination_fences.owner_changes +
				CASE WHEN destination_fences.owner = EXCLUDED.owner THEN 0 ELSE 1 END
		WHERE (destination_fences.epoch, destination_fences.token) < (EXCLUDED.epoch, EXCLUDED.token)`,
		dest, f.Epoch, f.Token, f.Owner)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s", ErrFenced, dest)
	}
	return nil
}

// checkFence holds the destination's fence row (FOR SHARE, so a newer
// owner's TakeFence waits for tx) and fails with ErrFenced unless it is f.
func checkFence(ctx context.Context, tx pgx.Tx, dest string, f Fence) error {
	var ok bool
	err := tx.QueryRow(ctx, `SELECT TRUE FROM destination_fences
		WHERE destination = $1 AND epoch = $2 AND token = $3 FOR SHARE`, dest, f.Epoch, f.Token).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %s", ErrFenced, dest)
	}
	return err
}
