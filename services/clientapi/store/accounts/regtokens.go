package accounts

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrExists is returned when creating a row whose key is taken.
var ErrExists = errors.New("already exists")

// RegistrationToken is a row of registration_tokens, in the shape of
// Synapse's admin API.
type RegistrationToken struct {
	Token       string `json:"token"`
	UsesAllowed *int   `json:"uses_allowed"`
	Pending     int    `json:"pending"`
	Completed   int    `json:"completed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

const regTokenColumns = `token, uses_allowed, pending, completed, expiry_time`

func scanRegToken(row pgx.Row) (RegistrationToken, error) {
	var t RegistrationToken
	err := row.Scan(&t.Token, &t.UsesAllowed, &t.Pending, &t.Completed, &t.ExpiryTime)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, ErrNotFound
	}
	return t, err
}

// RegistrationTokens lists tokens; valid filters on validity at nowMS.
func (s *Store) RegistrationTokens(ctx context.Context, valid *bool, nowMS int64) ([]RegistrationToken, error) {
	q := `SELECT ` + regTokenColumns + ` FROM registration_tokens`
	args := []any{}
	if valid != nil {
		cond := `((expiry_time IS NULL OR expiry_time > $1) AND (uses_allowed IS NULL OR pending + completed < uses_allowed))`
		if *valid {
			q += ` WHERE ` + cond
		} else {
			q += ` WHERE NOT ` + cond
		}
		args = append(args, nowMS)
	}
	rows, err := s.db.Query(ctx, q+` ORDER BY token`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []RegistrationToken{}
	for rows.Next() {
		t, err := scanRegToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RegistrationToken returns one token, or ErrNotFound.
func (s *Store) RegistrationToken(ctx context.Context, token string) (RegistrationToken, error) {
	return scanRegToken(s.db.QueryRow(ctx, `SELECT `+regTokenColumns+` FROM registration_tokens WHERE token = $1`, token))
}

// RegistrationTokenValid reports whether a token can be used now.
func (s *Store) RegistrationTokenValid(ctx context.Context, token string, nowMS int64) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM registration_tokens WHERE token = $1
		AND (expiry_time IS NULL OR expiry_time > $2) AND (uses_allowed IS NULL OR pending + completed < uses_allowed))`,
		token, nowMS).Scan(&ok)
	return ok, err
}

// CreateRegistrationToken stores a new token; a taken one is ErrExists.
func (s *Store) CreateRegistrationToken(ctx context.Context, t RegistrationToken) (RegistrationToken, error) {
	out, err := scanRegToken(s.db.QueryRow(ctx, `INSERT INTO registration_tokens (token, uses_allowed, expiry_time)
		VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING `+regTokenColumns, t.Token, t.UsesAllowed, t.ExpiryTime))
	if errors.Is(err, ErrNotFound) {
		return out, ErrExists
	}
	return out, err
}

// UpdateRegistrationToken sets uses_allowed and/or expiry_time (only the
// fields whose set flag is true; a nil value clears the limit).
func (s *Store) UpdateRegistrationToken(ctx context.Context, token string, setUses bool, uses *int, setExpiry bool, expiry *int64) (RegistrationToken, error) {
	return scanRegToken(s.db.QueryRow(ctx, `UPDATE registration_tokens SET
		uses_allowed = CASE WHEN $2 THEN $3 ELSE uses_allowed END,
		expiry_time = CASE WHEN $4 THEN $5 ELSE expiry_time END
		WHERE token = $1 RETURNING `+regTokenColumns, token, setUses, uses, setExpiry, expiry))
}

// DeleteRegistrationToken deletes a token, or returns ErrNotFound.
func (s *Store) DeleteRegistrationToken(ctx context.Context, token string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM registration_tokens WHERE token = $1`, token)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return err
}

// CreateNonce stores a shared-secret registration nonce and forgets those
// older than maxAge.
func (s *Store) CreateNonce(ctx context.Context, nonce string, maxAge time.Duration) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM registration_nonces WHERE created_at < now() - $1::interval`, maxAge.String()); err != nil {
		return err
	}
	_, err := s.db.Exec(ctx, `INSERT INTO registration_nonces (nonce) VALUES ($1)`, nonce)
	return err
}

// ConsumeNonce deletes a nonce younger than maxAge and reports whether it
// existed: each nonce is good for one attempt.
func (s *Store) ConsumeNonce(ctx context.Context, nonce string, maxAge time.Duration) (bool, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM registration_nonces WHERE nonce = $1 AND created_at >= now() - $2::interval`,
		nonce, maxAge.String())
	return err == nil && tag.RowsAffected() == 1, err
}

// CreateLoginToken stores an m.login.token token hash.
func (s *Store) CreateLoginToken(ctx context.Context, hash []byte, userID string, expires time.Time) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM login_tokens WHERE expires_at < now()`); err != nil {
		return err
	}
	_, err := s.db.Exec(ctx, `INSERT INTO login_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)`, hash, userID, expires)
	return err
}

// ConsumeLoginToken deletes a login token and returns its user if it had
// not expired at now; ErrNotFound otherwise.
func (s *Store) ConsumeLoginToken(ctx context.Context, hash []byte, now time.Time) (string, error) {
	var userID string
	var expires time.Time
	err := s.db.QueryRow(ctx, `DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_at`, hash).Scan(&userID, &expires)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !now.Before(expires)) {
		return "", ErrNotFound
	}
	return userID, err
}
