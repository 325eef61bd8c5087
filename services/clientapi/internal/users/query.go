package users

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib/spec"

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
