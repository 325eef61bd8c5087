package users

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// What other services ask about local users (the client-API's gRPC
// UserService, handler.go in the root package): reads on top of the same
// store the client endpoints use.

// ErrNotLocal is a user ID that is not one of this server's users (or not
// a user ID at all).
var ErrNotLocal = errors.New("not a user ID of this server")

// Queries answers other services' questions about local users.
type Queries struct {
	*base
}

// localpart returns the localpart of a user ID of this server, or
// ErrNotLocal.
func (s *Queries) localpart(userID string) (string, error) {
	uid, err := spec.NewUserID(userID, true)
	if err != nil || string(uid.Domain()) != s.serverName {
		return "", ErrNotLocal
	}
	return uid.Local(), nil
}

// Profile returns a local user's display name and avatar URL ("" when
// unset): accounts.ErrNotFound for an unknown or deactivated user,
// ErrNotLocal for another server's.
func (s *Queries) Profile(ctx context.Context, userID string) (displayName, avatarURL string, err error) {
	lp, err := s.localpart(userID)
	if err != nil {
		return "", "", err
	}
	acct, err := s.accounts.Account(ctx, lp)
	if err == nil && acct.Deactivated {
		err = accounts.ErrNotFound
	}
	if err != nil {
		return "", "", err
	}
	return acct.DisplayName, acct.AvatarURL, nil
}

// AccountInfo is what QueryAccount says of a user ID of this server.
type AccountInfo struct {
	// Exists: the user ID was registered (deactivated accounts exist).
	Exists, Deactivated, Guest, Admin, Locked, Suspended bool
}

// Account says whether a local account exists and what it is;
// ErrNotLocal for another server's user.
func (s *Queries) Account(ctx context.Context, userID string) (AccountInfo, error) {
	lp, err := s.localpart(userID)
	if err != nil {
		return AccountInfo{}, err
	}
	acct, err := s.accounts.Account(ctx, lp)
	if errors.Is(err, accounts.ErrNotFound) {
		return AccountInfo{}, nil
	}
	if err != nil {
		return AccountInfo{}, err
	}
	info := AccountInfo{Exists: true, Deactivated: acct.Deactivated, Guest: acct.Guest, Admin: acct.Admin}
	if !acct.Deactivated {
		m, err := s.accounts.AccountModeration(ctx, lp)
		if err != nil && !errors.Is(err, accounts.ErrNotFound) {
			return AccountInfo{}, err
		}
		info.Locked, info.Suspended = m.Locked, m.Suspended
	}
	return info, nil
}

// Devices lists a local user's devices: accounts.ErrNotFound when the
// user has no account, ErrNotLocal for another server's user.
func (s *Queries) Devices(ctx context.Context, userID string) ([]accounts.Device, error) {
	lp, err := s.localpart(userID)
	if err != nil {
		return nil, err
	}
	if ok, err := s.accounts.AccountExists(ctx, lp); err != nil {
		return nil, err
	} else if !ok {
		return nil, accounts.ErrNotFound
	}
	return s.accounts.Devices(ctx, userID)
}

// AccountData returns a local user's account data of a type, global
// (roomID "") or of a room, as the client reads it: m.push_rules is the
// effective rule set. accounts.ErrNotFound when there is none.
func (s *Queries) AccountData(ctx context.Context, userID, roomID, typ string) ([]byte, error) {
	if _, err := s.localpart(userID); err != nil {
		return nil, err
	}
	if roomID == "" && typ == store.PushRulesType {
		return s.push.RulesContent(ctx, userID)
	}
	return s.store.GetAccountData(ctx, userID, roomID, typ)
}

// OpenIDTokenUser returns the user of an OpenID token that has not
// expired; accounts.ErrNotFound otherwise.
func (s *Queries) OpenIDTokenUser(ctx context.Context, token string) (string, error) {
	return s.accounts.OpenIDTokenUser(ctx, hashToken(token), s.now())
}

// CheckLocal returns ErrNotLocal unless userID is a user ID of this server.
func (s *Queries) CheckLocal(userID string) error {
	_, err := s.localpart(userID)
	return err
}
