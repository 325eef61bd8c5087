package accounts

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// CreateOpenIDToken stores an OpenID token (its SHA-256) of userID until
// expires, deleting expired ones.
func (s *Store) CreateOpenIDToken(ctx context.Context, hash []byte, userID string, expires time.Time) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM openid_tokens WHERE expires_at < now()`); err != nil {
		return err
	}
	_, err := s.db.Exec(ctx, `INSERT INTO openid_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)`, hash, userID, expires)
	return err
}

// OpenIDTokenUser returns the user of an OpenID token (by its SHA-256)
// that has not expired at now; ErrNotFound otherwise. The token stays
// valid until it expires: a relying party may ask more than once.
func (s *Store) OpenIDTokenUser(ctx context.Context, hash []byte, now time.Time) (string, error) {
	var userID string
	var expires time.Time
	err := s.db.QueryRow(ctx, `SELECT user_id, expires_at FROM openid_tokens WHERE token_hash = $1`, hash).Scan(&userID, &expires)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !now.Before(expires)) {
		return "", ErrNotFound
	}
	return userID, err
}
