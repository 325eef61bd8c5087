package accounts

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrTokenInvalid is a registration token that does not exist, has expired
// or has no uses left.
var ErrTokenInvalid = errors.New("registration token invalid")

// UIASession is a user-interactive auth session.
type UIASession struct {
	ID string
	// UserID is the user the session authenticates; empty for registration.
	UserID string
	// Purpose names the request the session was opened for, so that a
	// session cannot be replayed against another endpoint.
	Purpose   string
	Completed []string
	// RegToken is the registration token reserved by the session.
	RegToken string
}

// CreateUIASession stores a new session. Sessions older than maxAge are
// deleted first, releasing the registration-token uses they reserved.
func (s *Store) CreateUIASession(ctx context.Context, sess UIASession, maxAge time.Duration) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `WITH old AS (
				DELETE FROM uia_sessions WHERE created_at < now() - $1::interval RETURNING reg_token
			)
			UPDATE registration_tokens t SET pending = greatest(t.pending - n.c, 0)
			FROM (SELECT reg_token, count(*) AS c FROM old WHERE reg_token IS NOT NULL GROUP BY reg_token) n
			WHERE t.token = n.reg_token`, maxAge.String()); err != nil {
			return fmt.Errorf("expire uia sessions: %w", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO uia_sessions (session_id, user_id, purpose) VALUES ($1, $2, $3)`,
			sess.ID, nullable(sess.UserID), sess.Purpose)
		return err
	})
}

// GetUIASession returns a session younger than maxAge, or ErrNotFound.
func (s *Store) GetUIASession(ctx context.Context, id string, maxAge time.Duration) (UIASession, error) {
	sess := UIASession{ID: id}
	var user, token *string
	err := s.db.QueryRow(ctx, `SELECT user_id, purpose, completed, reg_token FROM uia_sessions
		WHERE session_id = $1 AND created_at >= now() - $2::interval`, id, maxAge.String()).
		Scan(&user, &sess.Purpose, &sess.Completed, &token)
	if errors.Is(err, pgx.ErrNoRows) {
		return UIASession{}, ErrNotFound
	}
	sess.UserID, sess.RegToken = deref(user), deref(token)
	return sess, err
}

// CompleteUIAStage records a completed stage.
func (s *Store) CompleteUIAStage(ctx context.Context, id, stage string) error {
	_, err := s.db.Exec(ctx, `UPDATE uia_sessions SET completed = array_append(completed, $2)
		WHERE session_id = $1 AND NOT ($2 = ANY(completed))`, id, stage)
	return err
}

// ReserveRegistrationToken completes m.login.registration_token for a
// session: the token must exist, not be expired (nowMS) and have a use
// left counting pending ones; one pending use is taken. A session that
// already reserved a token keeps it. Invalid tokens are ErrTokenInvalid.
func (s *Store) ReserveRegistrationToken(ctx context.Context, sessionID, token string, nowMS int64) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var held *string
		if err := tx.QueryRow(ctx, `SELECT reg_token FROM uia_sessions WHERE session_id = $1 FOR UPDATE`, sessionID).Scan(&held); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return ErrNotFound
			}
			return err
		}
		if held != nil {
			if *held == token {
				return nil
			}
			return ErrTokenInvalid
		}
		tag, err := tx.Exec(ctx, `UPDATE registration_tokens SET pending = pending + 1
			WHERE token = $1 AND (expiry_time IS NULL OR expiry_time > $2)
			AND (uses_allowed IS NULL OR pending + completed < uses_allowed)`, token, nowMS)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrTokenInvalid
		}
		_, err = tx.Exec(ctx, `UPDATE uia_sessions SET reg_token = $2,
			completed = array_append(completed, 'm.login.registration_token') WHERE session_id = $1`, sessionID, token)
		return err
	})
}

// DeleteUIASession removes a completed session. A registration token it
// reserved is released (not consumed).
func (s *Store) DeleteUIASession(ctx context.Context, id string) error {
	_, err := s.db.Exec(ctx, `WITH d AS (DELETE FROM uia_sessions WHERE session_id = $1 RETURNING reg_token)
		UPDATE registration_tokens SET pending = greatest(pending - 1, 0) WHERE token = (SELECT reg_token FROM d)`, id)
	return err
}

// consumeUIASession deletes a registration's session and turns the
// registration-token use it reserved from pending into completed.
func consumeUIASession(ctx context.Context, tx pgx.Tx, id string) error {
	_, err := tx.Exec(ctx, `WITH d AS (DELETE FROM uia_sessions WHERE session_id = $1 RETURNING reg_token)
		UPDATE registration_tokens SET pending = greatest(pending - 1, 0), completed = completed + 1
		WHERE token = (SELECT reg_token FROM d)`, id)
	return err
}
