package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Login is a new access token for a device.
type Login struct {
	UserID      string
	DeviceID    string
	DisplayName string
	// TokenHash is the SHA-256 of the access token.
	TokenHash []byte
}

// CreateAccount creates an account and, when login is not nil, its first
// device and access token, all in one transaction. passwordHash nil means
// the account has no password. A taken localpart is ErrUserExists.
func (s *Store) CreateAccount(ctx context.Context, localpart string, passwordHash *string, login *Login) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO accounts (localpart, password_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
			localpart, passwordHash)
		if err != nil {
			return fmt.Errorf("insert account: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrUserExists
		}
		if login == nil {
			return nil
		}
		_, err = addLogin(ctx, tx, *login)
		return err
	})
}

// AccountExists reports whether the localpart is registered.
func (s *Store) AccountExists(ctx context.Context, localpart string) (bool, error) {
	var exists bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM accounts WHERE localpart = $1)`, localpart).Scan(&exists)
	return exists, err
}

// PasswordHash returns the account's password hash; ErrNotFound when the
// account does not exist or has no password.
func (s *Store) PasswordHash(ctx context.Context, localpart string) (string, error) {
	var hash *string
	err := s.db.QueryRow(ctx, `SELECT password_hash FROM accounts WHERE localpart = $1`, localpart).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && hash == nil) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", err
	}
	return *hash, nil
}

// AddLogin creates the device if it is new and stores a new access token
// for it. Tokens previously issued to the device are revoked.
func (s *Store) AddLogin(ctx context.Context, login Login) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		_, err := addLogin(ctx, tx, login)
		return err
	})
}

func addLogin(ctx context.Context, tx pgx.Tx, login Login) (revoked int64, err error) {
	var name *string
	if login.DisplayName != "" {
		name = &login.DisplayName
	}
	if _, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, device_id) DO NOTHING`, login.UserID, login.DeviceID, name); err != nil {
		return 0, fmt.Errorf("insert device: %w", err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`, login.UserID, login.DeviceID)
	if err != nil {
		return 0, fmt.Errorf("revoke device tokens: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id) VALUES ($1, $2, $3)`,
		login.TokenHash, login.UserID, login.DeviceID); err != nil {
		return 0, fmt.Errorf("insert access token: %w", err)
	}
	return tag.RowsAffected(), nil
}

// LookupToken returns the user and device an access token hash belongs to,
// or ErrNotFound.
func (s *Store) LookupToken(ctx context.Context, tokenHash []byte) (userID, deviceID string, err error) {
	err = s.db.QueryRow(ctx, `SELECT user_id, device_id FROM access_tokens WHERE token_hash = $1`, tokenHash).
		Scan(&userID, &deviceID)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", ErrNotFound
	}
	return userID, deviceID, err
}

// Logout deletes an access token and the device it belongs to (with every
// other token of that device).
func (s *Store) Logout(ctx context.Context, tokenHash []byte) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var userID, deviceID string
		err := tx.QueryRow(ctx, `DELETE FROM access_tokens WHERE token_hash = $1 RETURNING user_id, device_id`, tokenHash).
			Scan(&userID, &deviceID)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID)
		return err
	})
}

// LogoutAll deletes every access token and device of a user.
func (s *Store) LogoutAll(ctx context.Context, userID string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1`, userID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM devices WHERE user_id = $1`, userID)
		return err
	})
}

// CreateUIASession stores a new user-interactive auth session and deletes
// sessions older than maxAge.
func (s *Store) CreateUIASession(ctx context.Context, sessionID string, maxAge time.Duration) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM uia_sessions WHERE created_at < now() - $1::interval`, maxAge.String()); err != nil {
		return err
	}
	_, err := s.db.Exec(ctx, `INSERT INTO uia_sessions (session_id) VALUES ($1)`, sessionID)
	return err
}

// UIASessionExists reports whether a session exists and is younger than maxAge.
func (s *Store) UIASessionExists(ctx context.Context, sessionID string, maxAge time.Duration) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM uia_sessions WHERE session_id = $1 AND created_at >= now() - $2::interval)`,
		sessionID, maxAge.String()).Scan(&ok)
	return ok, err
}

// DeleteUIASession removes a completed session.
func (s *Store) DeleteUIASession(ctx context.Context, sessionID string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM uia_sessions WHERE session_id = $1`, sessionID)
	return err
}

// CreateFilter stores a filter and returns its ID; an identical filter of
// the same user keeps its ID.
func (s *Store) CreateFilter(ctx context.Context, userID string, filter []byte) (int64, error) {
	var id int64
	err := s.db.QueryRow(ctx, `WITH ins AS (
			INSERT INTO filters (user_id, filter) VALUES ($1, $2) ON CONFLICT (user_id, filter) DO NOTHING RETURNING filter_id
		)
		SELECT filter_id FROM ins UNION ALL SELECT filter_id FROM filters WHERE user_id = $1 AND filter = $2::jsonb LIMIT 1`,
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
