package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// AccountData is one account data entry. RoomID is empty for global data.
type AccountData struct {
	RoomID  string
	Type    string
	Content []byte
	Pos     int64
}

// lockAccountData serializes one user's account data writes ($1: the user
// ID) until the transaction ends, so their positions commit in order.
const lockAccountData = `SELECT pg_advisory_xact_lock(hashtext('myelin.account_data.' || $1))`

// upsertAccountData writes an entry ($1 user, $2 room, $3 type, $4
// content) at a new position, which it returns.
const upsertAccountData = `INSERT INTO account_data (user_id, room_id, type, content, pos)
	VALUES ($1, $2, $3, $4, nextval('account_data_pos'))
	ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = EXCLUDED.content, pos = EXCLUDED.pos
	RETURNING pos`

// PutAccountData stores an entry and returns its new position. Writes of
// one user are serialized so that their positions commit in order.
func (s *Store) PutAccountData(ctx context.Context, userID, roomID, typ string, content []byte) (int64, error) {
	var pos int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockAccountData, userID); err != nil {
			return err
		}
		return tx.QueryRow(ctx, upsertAccountData, userID, roomID, typ, content).Scan(&pos)
	})
	return pos, err
}

// GetAccountData returns one entry's content, or ErrNotFound.
func (s *Store) GetAccountData(ctx context.Context, userID, roomID, typ string) ([]byte, error) {
	var content []byte
	err := s.db.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, typ).Scan(&content)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return content, err
}

// AccountDataSince returns the user's entries changed after pos (all when
// pos is 0), and the user's latest position.
func (r Reader) AccountDataSince(ctx context.Context, userID string, pos int64) ([]AccountData, int64, error) {
	var ch AccountDataChanges
	b := &Batch{}
	b.accountDataSince(userID, pos, &ch)
	err := r.Send(ctx, b)
	return ch.Entries, ch.Latest, err
}

// AccountDataChanges is what changed in a user's account data after a
// position: the entries, and the rooms whose receipt copy changed (which
// shares the position sequence).
type AccountDataChanges struct {
	Entries []AccountData
	// Latest is the latest position of an entry (the position asked
	// about when none).
	Latest       int64
	ReceiptRooms []string
	// ReceiptLatest is the same for the receipt copy.
	ReceiptLatest int64
}

// AccountDataChanges queues the reads of AccountDataSince and
// ReceiptChangesSince into out.
func (b *Batch) AccountDataChanges(userID string, pos int64, out *AccountDataChanges) {
	b.accountDataSince(userID, pos, out)
	b.receiptChangesSince(userID, pos, out)
}

func (b *Batch) accountDataSince(userID string, pos int64, out *AccountDataChanges) {
	out.Latest = pos
	b.b.Queue(`SELECT room_id, type, content, pos FROM account_data
		WHERE user_id = $1 AND pos > $2 ORDER BY pos`, userID, pos).Query(func(rows pgx.Rows) error {
		var err error
		out.Entries, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (AccountData, error) {
			var a AccountData
			err := row.Scan(&a.RoomID, &a.Type, &a.Content, &a.Pos)
			return a, err
		})
		if len(out.Entries) > 0 {
			out.Latest = out.Entries[len(out.Entries)-1].Pos
		}
		return err
	})
}

// AccountDataEntry is GetAccountData through a Reader (inside a snapshot).
func (r Reader) AccountDataEntry(ctx context.Context, userID, roomID, typ string) ([]byte, error) {
	var content []byte
	err := r.q.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, typ).Scan(&content)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return content, err
}

// UpdateAccountData rewrites one entry with fn(current content, nil when
// none) under the user's account data lock, so concurrent read-modify-
// write updates (push rules) do not lose each other's changes. An error
// from fn aborts the update and is returned as is.
func (s *Store) UpdateAccountData(ctx context.Context, userID, roomID, typ string, fn func(old []byte) ([]byte, error)) (int64, error) {
	var pos int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockAccountData, userID); err != nil {
			return err
		}
		var old []byte
		err := tx.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
			userID, roomID, typ).Scan(&old)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		content, err := fn(old)
		if err != nil {
			return err
		}
		return tx.QueryRow(ctx, upsertAccountData, userID, roomID, typ, content).Scan(&pos)
	})
	return pos, err
}
