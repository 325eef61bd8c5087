package keyserver

// Federation's side of device lists (issue #16): a local user's list as
// /user/devices serves it, and the lists of other servers' users as their
// m.device_list_update and m.signing_key_update EDUs announce them. The
// federation-receiver calls these; the resync of a stale list (fetching
// /user/devices from the user's server, then SetRemoteDeviceList) is left
// to whichever federation service takes it on.

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// remoteUser checks that userID is a valid user ID of another server and,
// when origin is given, of that server.
func (s *Service) remoteUser(userID, origin string) error {
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return fmt.Errorf("%w: invalid user ID %q", ErrInvalidParam, userID)
	}
	if u.Domain() == s.server {
		return fmt.Errorf("%w: %s is a user of this server", ErrInvalidParam, userID)
	}
	if origin != "" && string(u.Domain()) != origin {
		return fmt.Errorf("%w: %s is not a user of %s", ErrInvalidParam, userID, origin)
	}
	return nil
}

// checkRemoteKeyObject: a key object, when given, is a JSON object whose
// user_id (and device_id, for device keys) are the ones it is filed under.
func checkRemoteKeyObject(raw []byte, userID, deviceID string) error {
	if len(raw) == 0 {
		return nil
	}
	var obj struct {
		UserID   *string `json:"user_id"`
		DeviceID *string `json:"device_id"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return fmt.Errorf("%w: a key is not a JSON object", ErrBadJSON)
	}
	if obj.UserID != nil && *obj.UserID != userID {
		return fmt.Errorf("%w: key of user %q filed under %q", ErrInvalidParam, *obj.UserID, userID)
	}
	if deviceID != "" && obj.DeviceID != nil && *obj.DeviceID != deviceID {
		return fmt.Errorf("%w: key of device %q filed under %q", ErrInvalidParam, *obj.DeviceID, deviceID)
	}
	return nil
}

// localDeviceList is /user/devices for a local user.
func (s *Service) localDeviceList(ctx context.Context, userID string) (store.DeviceList, error) {
	u, err := spec.NewUserID(userID, true)
	if err != nil || u.Domain() != s.server {
		return store.DeviceList{}, fmt.Errorf("%w: %q is not a user of this server", ErrInvalidParam, userID)
	}
	return s.store.LocalDeviceList(ctx, userID)
}

// updateRemoteDeviceList records an m.device_list_update from origin.
func (s *Service) updateRemoteDeviceList(ctx context.Context, origin string, up store.RemoteDeviceUpdate) (duplicate, stale bool, err error) {
	if err := s.remoteUser(up.UserID, origin); err != nil {
		return false, false, err
	}
	if up.DeviceID == "" {
		return false, false, fmt.Errorf("%w: device_id is required", ErrMissingParam)
	}
	if err := checkRemoteKeyObject(up.Keys, up.UserID, up.DeviceID); err != nil {
		return false, false, err
	}
	return s.store.ApplyRemoteDeviceUpdate(ctx, up)
}

// updateRemoteSigningKeys records an m.signing_key_update from origin.
func (s *Service) updateRemoteSigningKeys(ctx context.Context, origin, userID string, master, selfSigning []byte) error {
	if err := s.remoteUser(userID, origin); err != nil {
		return err
	}
	for _, k := range [][]byte{master, selfSigning} {
		if err := checkRemoteKeyObject(k, userID, ""); err != nil {
			return err
		}
	}
	return s.store.PutRemoteSigningKeys(ctx, userID, master, selfSigning)
}

// setRemoteDeviceList takes a resync's whole list.
func (s *Service) setRemoteDeviceList(ctx context.Context, l store.DeviceList) (bool, error) {
	if err := s.remoteUser(l.UserID, ""); err != nil {
		return false, err
	}
	for _, d := range l.Devices {
		if d.DeviceID == "" {
			return false, fmt.Errorf("%w: a device without device_id", ErrMissingParam)
		}
		if err := checkRemoteKeyObject(d.Keys, l.UserID, d.DeviceID); err != nil {
			return false, err
		}
	}
	for _, k := range [][]byte{l.MasterKey, l.SelfSigningKey} {
		if err := checkRemoteKeyObject(k, l.UserID, ""); err != nil {
			return false, err
		}
	}
	return s.store.ReplaceRemoteDeviceList(ctx, l)
}

// markRemoteDeviceListsStale marks remote users' lists for a resync.
func (s *Service) markRemoteDeviceListsStale(ctx context.Context, users []string) error {
	for _, u := range users {
		if err := s.remoteUser(u, ""); err != nil {
			return err
		}
	}
	return s.store.MarkRemoteListsStale(ctx, users)
}
