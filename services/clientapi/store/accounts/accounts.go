package accounts

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
	// ExpiresAt is when the access token expires; zero means never.
	ExpiresAt time.Time
	// RefreshHash is the SHA-256 of the refresh token issued with the
	// access token; nil when the client asked for none.
	RefreshHash []byte
	// PrevRefreshHash, set by Refresh, is the refresh token this login
	// was bought with: it stays valid until either new token is used.
	PrevRefreshHash []byte
	// IP is the client's address, remembered as the device's last seen IP.
	IP string
}

// NewAccount is an account to create.
type NewAccount struct {
	Localpart string
	// PasswordHash nil means the account has no password.
	PasswordHash *string
	Admin        bool
	Guest        bool
	DisplayName  string
	// UIASession, when set, is the registration's UIA session: the
	// registration token it reserved (if any) is consumed in the same
	// transaction, and the session is deleted.
	UIASession string
}

// CreateAccount creates an account and, when login is not nil, its first
// device and access token, all in one transaction. A taken localpart is
// ErrUserExists.
func (s *Store) CreateAccount(ctx context.Context, acct NewAccount, login *Login) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO accounts (localpart, password_hash, is_admin, is_guest, displayname)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
			acct.Localpart, acct.PasswordHash, acct.Admin, acct.Guest, nullable(acct.DisplayName))
		if err != nil {
			return fmt.Errorf("insert account: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrUserExists
		}
		return finishRegistration(ctx, tx, acct.UIASession, login)
	})
}

// finishRegistration consumes the registration's UIA session (and with it
// any reserved registration token) and adds its first login, if any.
func finishRegistration(ctx context.Context, tx pgx.Tx, uiaSession string, login *Login) error {
	if uiaSession != "" {
		if err := consumeUIASession(ctx, tx, uiaSession); err != nil {
			return err
		}
	}
	if login == nil {
		return nil
	}
	_, err := addLogin(ctx, tx, *login)
	return err
}

// UpgradeGuest turns a guest account into a full account with the given
// password hash (nil: none), consuming the UIA session like CreateAccount,
// and adds the login when one is given. ErrNotFound: no such guest.
func (s *Store) UpgradeGuest(ctx context.Context, localpart string, passwordHash *string, uiaSession string, login *Login) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE accounts SET is_guest = false, password_hash = $2
			WHERE localpart = $1 AND is_guest AND NOT deactivated`, localpart, passwordHash)
		if err != nil {
			return fmt.Errorf("upgrade guest: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return finishRegistration(ctx, tx, uiaSession, login)
	})
}

// AccountExists reports whether the localpart is registered (deactivated
// accounts included: their IDs are never reused).
func (s *Store) AccountExists(ctx context.Context, localpart string) (bool, error) {
	var exists bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM accounts WHERE localpart = $1)`, localpart).Scan(&exists)
	return exists, err
}

// Account is what the client-API knows about a local account.
type Account struct {
	Localpart    string
	PasswordHash string // empty: no password
	Admin        bool
	Guest        bool
	Deactivated  bool
	Locked       bool
	DisplayName  string
	AvatarURL    string
}

// Account returns a local account, or ErrNotFound.
func (s *Store) Account(ctx context.Context, localpart string) (Account, error) {
	var a Account
	var hash, name, avatar *string
	err := s.db.QueryRow(ctx, `SELECT localpart, password_hash, is_admin, is_guest, deactivated, locked, displayname, avatar_url
		FROM accounts WHERE localpart = $1`, localpart).
		Scan(&a.Localpart, &hash, &a.Admin, &a.Guest, &a.Deactivated, &a.Locked, &name, &avatar)
	if errors.Is(err, pgx.ErrNoRows) {
		return Account{}, ErrNotFound
	}
	if err != nil {
		return Account{}, err
	}
	a.PasswordHash, a.DisplayName, a.AvatarURL = deref(hash), deref(name), deref(avatar)
	return a, nil
}

// PasswordHash returns the account's password hash; ErrNotFound when the
// account does not exist, is deactivated or has no password.
func (s *Store) PasswordHash(ctx context.Context, localpart string) (string, error) {
	var hash *string
	err := s.db.QueryRow(ctx, `SELECT password_hash FROM accounts WHERE localpart = $1 AND NOT deactivated`, localpart).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && hash == nil) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", err
	}
	return *hash, nil
}

// SetAdmin sets or clears the admin flag of an account.
func (s *Store) SetAdmin(ctx context.Context, localpart string, admin bool) error {
	tag, err := s.db.Exec(ctx, `UPDATE accounts SET is_admin = $2 WHERE localpart = $1`, localpart, admin)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return err
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
	now := time.Now().UnixMilli()
	if _, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ts = EXCLUDED.last_seen_ts, last_seen_ip = EXCLUDED.last_seen_ip`,
		login.UserID, login.DeviceID, nullable(login.DisplayName), now, nullable(login.IP)); err != nil {
		return 0, fmt.Errorf("insert device: %w", err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`, login.UserID, login.DeviceID)
	if err != nil {
		return 0, fmt.Errorf("revoke device tokens: %w", err)
	}
	// Every refresh token of the device goes, but the one a refresh was
	// given (PrevRefreshHash): the client may not have received this
	// answer. In a refresh the others are spent (remembered for reuse
	// detection).
	if login.PrevRefreshHash != nil {
		// The pair an earlier use of the same token bought was never
		// used: it just goes. The token this one was bought with is spent.
		if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2 AND bought_with = $3`,
			login.UserID, login.DeviceID, login.PrevRefreshHash); err != nil {
			return 0, fmt.Errorf("revoke refresh tokens: %w", err)
		}
		if err := spendRefreshTokens(ctx, tx, `user_id = $1 AND device_id = $2 AND token_hash <> $3`,
			login.UserID, login.DeviceID, login.PrevRefreshHash); err != nil {
			return 0, fmt.Errorf("revoke refresh tokens: %w", err)
		}
	} else if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2`, login.UserID, login.DeviceID); err != nil {
		return 0, fmt.Errorf("revoke refresh tokens: %w", err)
	}
	var expires *time.Time
	if !login.ExpiresAt.IsZero() {
		expires = &login.ExpiresAt
	}
	if _, err := tx.Exec(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id, expires_at, prev_refresh_hash) VALUES ($1, $2, $3, $4, $5)`,
		login.TokenHash, login.UserID, login.DeviceID, expires, login.PrevRefreshHash); err != nil {
		return 0, fmt.Errorf("insert access token: %w", err)
	}
	if login.RefreshHash != nil {
		if _, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (token_hash, user_id, device_id, bought_with) VALUES ($1, $2, $3, $4)`,
			login.RefreshHash, login.UserID, login.DeviceID, login.PrevRefreshHash); err != nil {
			return 0, fmt.Errorf("insert refresh token: %w", err)
		}
	}
	return tag.RowsAffected(), nil
}

// TokenOwner is what an access token resolves to.
type TokenOwner struct {
	UserID   string
	DeviceID string
	// ExpiresAt is zero for tokens that never expire.
	ExpiresAt time.Time
	Admin     bool
	Guest     bool
	Locked    bool
	Suspended bool
}

// LookupToken returns the owner of an access token hash, or ErrNotFound.
// The account is found by the user ID's localpart (local users only hold
// tokens; localparts cannot contain ':'). The first use of a token that a
// refresh issued revokes the refresh token that refresh was given.
func (s *Store) LookupToken(ctx context.Context, tokenHash []byte) (TokenOwner, error) {
	var o TokenOwner
	var expires *time.Time
	var prevRefresh []byte
	err := s.db.QueryRow(ctx, `SELECT t.user_id, t.device_id, t.expires_at, a.is_admin, a.is_guest, a.locked, a.suspended, t.prev_refresh_hash
		FROM access_tokens t
		JOIN accounts a ON a.localpart = substring(t.user_id FROM 2 FOR position(':' IN t.user_id) - 2)
		WHERE t.token_hash = $1 AND NOT a.deactivated`, tokenHash).
		Scan(&o.UserID, &o.DeviceID, &expires, &o.Admin, &o.Guest, &o.Locked, &o.Suspended, &prevRefresh)
	if errors.Is(err, pgx.ErrNoRows) {
		return TokenOwner{}, ErrNotFound
	}
	if err != nil {
		return TokenOwner{}, err
	}
	if expires != nil {
		o.ExpiresAt = *expires
	}
	if prevRefresh != nil {
		if err := s.spendRefreshed(ctx, tokenHash, prevRefresh); err != nil {
			return TokenOwner{}, err
		}
	}
	return o, nil
}

// spendRefreshed revokes the refresh token a refresh was given, now that
// the access token it issued is used, and clears that access token's link
// to it.
func (s *Store) spendRefreshed(ctx context.Context, tokenHash, prevRefresh []byte) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := spendRefreshTokens(ctx, tx, `token_hash = $1`, prevRefresh); err != nil {
			return fmt.Errorf("revoke the refreshed token: %w", err)
		}
		_, err := tx.Exec(ctx, `UPDATE access_tokens SET prev_refresh_hash = NULL WHERE token_hash = $1`, tokenHash)
		return err
	})
}

// spentRefreshKept is how many spent refresh tokens of a device are
// remembered for reuse detection.
const spentRefreshKept = 10

// spendRefreshTokens deletes the refresh tokens matching cond (on args)
// and remembers them as spent, keeping the newest spentRefreshKept per
// device.
func spendRefreshTokens(ctx context.Context, tx pgx.Tx, cond string, args ...any) error {
	now := time.Now().UnixMilli()
	n := len(args) + 1
	rows, err := tx.Query(ctx, `WITH d AS (DELETE FROM refresh_tokens WHERE `+cond+` RETURNING token_hash, user_id, device_id)
		INSERT INTO spent_refresh_tokens (token_hash, user_id, device_id, spent_ts)
		SELECT token_hash, user_id, device_id, $`+fmt.Sprint(n)+` FROM d ON CONFLICT DO NOTHING
		RETURNING user_id, device_id`, append(args, now)...)
	if err != nil {
		return err
	}
	type dev struct{ user, device string }
	seen := map[dev]bool{}
	for rows.Next() {
		var d dev
		if err := rows.Scan(&d.user, &d.device); err != nil {
			rows.Close()
			return err
		}
		seen[d] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for d := range seen {
		if _, err := tx.Exec(ctx, `DELETE FROM spent_refresh_tokens WHERE user_id = $1 AND device_id = $2 AND token_hash NOT IN (
			SELECT token_hash FROM spent_refresh_tokens WHERE user_id = $1 AND device_id = $2 ORDER BY spent_ts DESC LIMIT $3)`,
			d.user, d.device, spentRefreshKept); err != nil {
			return err
		}
	}
	return nil
}

// ErrRefreshReused is returned by Refresh for a refresh token that was
// already spent (login names its user and device). It is refused like an
// unknown one; the session is not revoked, since two clients of one
// session racing to refresh look the same as a stolen token.
var ErrRefreshReused = errors.New("spent refresh token used again")

// ErrAccountLocked is returned by Refresh for a locked account.
var ErrAccountLocked = errors.New("account locked")

// Refresh exchanges a refresh token for a new access and refresh token on
// the same device (login.UserID and login.DeviceID are filled in). The
// device's old access tokens stop working. The refresh token itself stays
// valid until either new token is used (LookupToken, the next Refresh), so
// a client that lost the answer can refresh again; that replaces the
// unused pair. An unknown refresh token is ErrNotFound.
func (s *Store) Refresh(ctx context.Context, refreshHash []byte, login *Login) error {
	reused := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT user_id, device_id FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE`, refreshHash).
			Scan(&login.UserID, &login.DeviceID)
		if errors.Is(err, pgx.ErrNoRows) {
			var user, device string
			err := tx.QueryRow(ctx, `SELECT user_id, device_id FROM spent_refresh_tokens WHERE token_hash = $1`, refreshHash).Scan(&user, &device)
			if errors.Is(err, pgx.ErrNoRows) {
				return ErrNotFound
			}
			if err != nil {
				return err
			}
			login.UserID, login.DeviceID, reused = user, device, true
			return nil
		}
		if err != nil {
			return err
		}
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT locked FROM accounts WHERE localpart = substring($1 FROM 2 FOR position(':' IN $1) - 2)`, login.UserID).Scan(&locked); err != nil {
			return err
		}
		if locked {
			return ErrAccountLocked
		}
		// addLogin keeps this refresh token and deletes the device's
		// others: the pair an earlier use of this one bought, or the
		// token this one was bought with.
		login.PrevRefreshHash = refreshHash
		_, err = addLogin(ctx, tx, *login)
		return err
	})
	if err == nil && reused {
		return ErrRefreshReused
	}
	return err
}

// Logout deletes an access token and the device it belongs to (with every
// other token of that device).
func (s *Store) Logout(ctx context.Context, tokenHash []byte) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var userID, deviceID string
		err := tx.QueryRow(ctx, `SELECT user_id, device_id FROM access_tokens WHERE token_hash = $1`, tokenHash).
			Scan(&userID, &deviceID)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return deleteDevices(ctx, tx, userID, []string{deviceID})
	})
}

// LogoutAll deletes every access token and device of a user.
func (s *Store) LogoutAll(ctx context.Context, userID string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		return deleteAllDevices(ctx, tx, userID, "")
	})
}

// deleteDevices deletes devices of a user with their access and refresh
// tokens and their pushers, and queues the deletion of their end-to-end
// keys for the key-server.
func deleteDevices(ctx context.Context, tx pgx.Tx, userID string, deviceIDs []string) error {
	rows, err := tx.Query(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2) RETURNING device_id`, userID, deviceIDs)
	if err != nil {
		return err
	}
	deleted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, q := range []string{
		`DELETE FROM pushers WHERE user_id = $1 AND device_id = ANY($2)`,
		`DELETE FROM access_tokens WHERE user_id = $1 AND device_id = ANY($2)`,
		`DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = ANY($2)`,
		`DELETE FROM spent_refresh_tokens WHERE user_id = $1 AND device_id = ANY($2)`,
		`DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = ANY($2)`,
		`DELETE FROM to_device_txns WHERE user_id = $1 AND device_id = ANY($2)`,
	} {
		if _, err := tx.Exec(ctx, q, userID, deviceIDs); err != nil {
			return err
		}
	}
	return queueDeviceDeletion(ctx, tx, userID, deleted)
}

// deleteAllDevices deletes every device of a user but keep (none when
// empty), with their tokens and pushers, and queues the deletion of their
// end-to-end keys. Pushers of no known device (set before devices owned
// them) go too: they may be another device's.
func deleteAllDevices(ctx context.Context, tx pgx.Tx, userID, keep string) error {
	rows, err := tx.Query(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id <> $2 RETURNING device_id`, userID, keep)
	if err != nil {
		return err
	}
	deleted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, q := range []string{
		`DELETE FROM pushers WHERE user_id = $1 AND device_id IS DISTINCT FROM $2`,
		`DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2`,
		`DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id <> $2`,
		`DELETE FROM spent_refresh_tokens WHERE user_id = $1 AND device_id <> $2`,
		`DELETE FROM to_device_messages WHERE user_id = $1 AND device_id <> $2`,
		`DELETE FROM to_device_txns WHERE user_id = $1 AND device_id <> $2`,
	} {
		if _, err := tx.Exec(ctx, q, userID, keep); err != nil {
			return err
		}
	}
	return queueDeviceDeletion(ctx, tx, userID, deleted)
}

// GuestLocalparts returns which of the given localparts are guest accounts.
func (s *Store) GuestLocalparts(ctx context.Context, localparts []string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT localpart FROM accounts WHERE is_guest AND localpart = ANY($1)`, localparts)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// Moderation is an account's standing for the admin lock and suspend
// endpoints.
type Moderation struct {
	Admin, Locked, Suspended bool
}

// AccountModeration returns an active account's moderation state;
// ErrNotFound when there is no such account or it is deactivated.
func (s *Store) AccountModeration(ctx context.Context, localpart string) (Moderation, error) {
	var m Moderation
	err := s.db.QueryRow(ctx, `SELECT is_admin, locked, suspended FROM accounts WHERE localpart = $1 AND NOT deactivated`, localpart).
		Scan(&m.Admin, &m.Locked, &m.Suspended)
	if errors.Is(err, pgx.ErrNoRows) {
		return Moderation{}, ErrNotFound
	}
	return m, err
}

// SetModeration sets an account's locked or suspended flag (field is
// "locked" or "suspended").
func (s *Store) SetModeration(ctx context.Context, localpart, field string, on bool) error {
	if field != "locked" && field != "suspended" {
		return fmt.Errorf("unknown moderation flag %q", field)
	}
	_, err := s.db.Exec(ctx, `UPDATE accounts SET `+field+` = $2 WHERE localpart = $1 AND NOT deactivated`, localpart, on)
	return err
}
