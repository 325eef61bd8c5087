package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// CreateFilter stores a filter and returns its ID; an identical filter of
// the same user keeps its ID.
func (s *Store) CreateFilter(ctx context.Context, userID string, filter []byte) (int64, error) {
	var id int64
	err := s.db.QueryRow(ctx, `WITH ins AS (
			INSERT INTO filters (user_id, filter) VALUES ($1, $2) ON CONFLICT (user_id, md5(filter::text)) DO NOTHING RETURNING filter_id
		)
		SELECT filter_id FROM ins UNION ALL
		SELECT filter_id FROM filters WHERE user_id = $1 AND md5(filter::text) = md5($2::jsonb::text) LIMIT 1`,
		userID, string(filter)).Scan(&id)
	return id, err
}

// Filter returns a stored filter of the user, or ErrNotFound.
func (s *Store) Filter(ctx context.Context, userID string, filterID int64) ([]byte, error) {
	var f []byte
	err := s.db.QueryRow(ctx, `SELECT filter::text FROM filters WHERE user_id = $1 AND filter_id = $2`, userID, filterID).Scan(&f)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return f, err
}
