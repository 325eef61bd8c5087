package users

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// profileFields are the profile keys Myelin stores.
var profileFields = []string{"displayname", "avatar_url"}

// maxProfileValue caps a display name or avatar URL.
const maxProfileValue = 1024

// profileUser reads {userId} and returns the user ID and, for a local
// user, the localpart ("" for a user of another server when federation
// is on; without federation they are not found).
func (s *Profiles) profileUser(r *http.Request) (string, string, error) {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return "", "", err
	}
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return "", "", matrixhttp.InvalidParam("Invalid user ID")
	}
	if string(uid.Domain()) != s.serverName {
		if s.fed == nil {
			return "", "", matrixhttp.NotFound("Profile not found")
		}
		return userID, "", nil
	}
	return userID, uid.Local(), nil
}

// remoteProfile asks the user's server for their profile (all of it, or
// one field), keeping the fields this server knows.
func (s *Profiles) remoteProfile(ctx context.Context, userID, field string) (map[string]any, error) {
	resp, err := s.fed.QueryProfile(ctx, &fedsenderv1.QueryProfileRequest{UserId: userID, Field: field})
	if err != nil {
		return nil, httpapi.FromRemote(ctx, s.log, "QueryProfile", err)
	}
	var got map[string]any
	if err := json.Unmarshal(resp.GetProfile(), &got); err != nil {
		return nil, httpapi.UnknownError(http.StatusBadGateway, "The user's server answered a profile that is not a JSON object")
	}
	out := map[string]any{}
	for _, f := range profileFields {
		if v, ok := got[f].(string); ok && v != "" && len(v) <= maxProfileValue {
			out[f] = v
		}
	}
	return out, nil
}

// loadProfile returns the stored profile of a local, active user.
// An unknown user in an application service's users namespace is asked
// about first (the appservice may register it).
func (s *Profiles) loadProfile(ctx context.Context, localpart string) (accounts.Account, error) {
	acct, err := s.accounts.Account(ctx, localpart)
	if errors.Is(err, store.ErrNotFound) && s.asQueries != nil {
		asked, qerr := s.asQueries.QueryUser(ctx, s.userID(localpart))
		if qerr != nil {
			return accounts.Account{}, qerr
		}
		if asked {
			acct, err = s.accounts.Account(ctx, localpart)
		}
	}
	if errors.Is(err, store.ErrNotFound) || (err == nil && acct.Deactivated) {
		return accounts.Account{}, matrixhttp.NotFound("Profile not found")
	}
	return acct, err
}

func profileBody(acct accounts.Account) map[string]any {
	out := map[string]any{}
	if acct.DisplayName != "" {
		out["displayname"] = acct.DisplayName
	}
	if acct.AvatarURL != "" {
		out["avatar_url"] = acct.AvatarURL
	}
	return out
}

// getProfile is GET /profile/{userId}.
func (s *Profiles) getProfile(r *http.Request, _ *httpapi.Device) (any, error) {
	userID, lp, err := s.profileUser(r)
	if err != nil {
		return nil, err
	}
	if lp == "" {
		return s.remoteProfile(r.Context(), userID, "")
	}
	acct, err := s.loadProfile(r.Context(), lp)
	if err != nil {
		return nil, err
	}
	return profileBody(acct), nil
}

// profileKey reads {keyName}; only the two stored fields exist.
func profileKey(r *http.Request) (string, error) {
	key, err := httpapi.PathParam(r, "keyName")
	if err != nil {
		return "", err
	}
	for _, f := range profileFields {
		if key == f {
			return key, nil
		}
	}
	return "", matrixhttp.NotFound("Unknown profile field")
}

// getProfileField is GET /profile/{userId}/{keyName}.
func (s *Profiles) getProfileField(r *http.Request, _ *httpapi.Device) (any, error) {
	userID, lp, err := s.profileUser(r)
	if err != nil {
		return nil, err
	}
	key, err := profileKey(r)
	if err != nil {
		return nil, err
	}
	var body map[string]any
	if lp == "" {
		if body, err = s.remoteProfile(r.Context(), userID, key); err != nil {
			return nil, err
		}
	} else {
		acct, err := s.loadProfile(r.Context(), lp)
		if err != nil {
			return nil, err
		}
		body = profileBody(acct)
	}
	if _, ok := body[key]; !ok {
		return nil, matrixhttp.NotFound("Profile field not set")
	}
	return map[string]any{key: body[key]}, nil
}

// changeableProfileField reads the user and field of a profile change and
// checks the caller may make it: only the user themself, and guests only
// their display name.
func (s *Profiles) changeableProfileField(r *http.Request, dev *httpapi.Device) (userID, lp, key string, err error) {
	if userID, lp, err = s.profileUser(r); err != nil {
		return "", "", "", err
	}
	if key, err = profileKey(r); err != nil {
		return "", "", "", err
	}
	if userID != dev.UserID {
		return "", "", "", matrixhttp.Forbidden("Cannot change another user's profile")
	}
	if dev.IsGuest && key != "displayname" {
		return "", "", "", httpapi.GuestForbidden("Guests may only change their display name")
	}
	return userID, lp, key, nil
}

// putProfileField is PUT /profile/{userId}/{keyName}: only the user
// themself may change their profile; guests only their display name. The
// change is then propagated to every room the user is joined to.
func (s *Profiles) putProfileField(r *http.Request, dev *httpapi.Device) (any, error) {
	userID, lp, key, err := s.changeableProfileField(r, dev)
	if err != nil {
		return nil, err
	}
	body, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := httpapi.DecodeObject(body, &fields); err != nil {
		return nil, err
	}
	raw, ok := fields[key]
	if !ok {
		return nil, matrixhttp.MissingParam("Missing " + key)
	}
	var value *string
	if err := json.Unmarshal(raw, &value); err != nil {
		return nil, matrixhttp.BadJSON(key + " must be a string")
	}
	if value != nil && len(*value) > maxProfileValue {
		return nil, matrixhttp.InvalidParam(key + " too long")
	}
	if value != nil && key == "avatar_url" && *value != "" && !strings.HasPrefix(*value, "mxc://") {
		return nil, matrixhttp.InvalidParam("avatar_url must be an mxc:// URI")
	}
	if value != nil && *value == "" {
		value = nil
	}
	return s.setProfileField(r.Context(), userID, lp, key, value)
}

// deleteProfileField is DELETE /profile/{userId}/{keyName} (spec v1.16):
// clears the field, with the same rules as PUT.
func (s *Profiles) deleteProfileField(r *http.Request, dev *httpapi.Device) (any, error) {
	userID, lp, key, err := s.changeableProfileField(r, dev)
	if err != nil {
		return nil, err
	}
	return s.setProfileField(r.Context(), userID, lp, key, nil)
}

// setProfileField stores a profile field and propagates the profile.
func (s *Profiles) setProfileField(ctx context.Context, userID, lp, key string, value *string) (any, error) {
	if err := s.accounts.SetProfileField(ctx, lp, key, value); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, matrixhttp.NotFound("Profile not found")
		}
		return nil, err
	}
	s.propagateProfile(ctx, userID, lp)
	return struct{}{}, nil
}

// propagateProfile sends a fresh m.room.member join event, carrying the
// current profile, to every room the user is joined to. A room that
// refuses (e.g. power levels) is logged and skipped: the profile itself
// has changed either way.
func (s *Profiles) propagateProfile(ctx context.Context, userID, localpart string) {
	acct, err := s.accounts.Account(ctx, localpart)
	if err != nil {
		s.log.Warn("profile propagation: load account", logging.UserID(userID), zap.Error(err))
		return
	}
	rooms, err := s.store.Reader().JoinedRooms(ctx, userID)
	if err != nil {
		s.log.Warn("profile propagation: joined rooms", logging.UserID(userID), zap.Error(err))
		return
	}
	for _, roomID := range rooms {
		content := map[string]any{"membership": "join"}
		for k, v := range profileBody(acct) {
			content[k] = v
		}
		if err := s.sendMember(ctx, roomID, userID, content); err != nil {
			s.log.Warn("profile propagation: send member event", logging.UserID(userID), logging.RoomID(roomID), zap.Error(err))
		}
	}
}

// sendMember sends userID's own m.room.member event to a room through the
// room-server.
func (s *base) sendMember(ctx context.Context, roomID, userID string, content map[string]any) error {
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	_, err = s.rooms.SendEvent(ctx, &roomserverv1.SendEventRequest{
		RoomId: roomID,
		Sender: userID,
		Event:  &roomserverv1.EventTemplate{Type: "m.room.member", StateKey: &userID, Content: raw},
	})
	return err
}

// addProfileToJoin puts the joining user's display name and avatar into
// the content of their own join event, as clients expect.
func (s *Profiles) addProfileToJoin(ctx context.Context, userID string, content map[string]any) {
	lp, ok := s.localpartOf(userID)
	if !ok {
		return
	}
	acct, err := s.accounts.Account(ctx, lp)
	if err != nil {
		return
	}
	for k, v := range profileBody(acct) {
		if _, set := content[k]; !set {
			content[k] = v
		}
	}
}

// userDirectorySearch is POST /user_directory/search: local users who
// share a room with the searcher or sit in a public room.
func (s *Profiles) userDirectorySearch(r *http.Request, dev *httpapi.Device) (any, error) {
	var req struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.SearchTerm == nil {
		return nil, matrixhttp.MissingParam("search_term is required")
	}
	limit := 10
	if req.Limit != nil {
		limit = min(max(*req.Limit, 1), 100)
	}
	users, err := s.accounts.SearchUsers(r.Context(), dev.UserID, s.serverName, *req.SearchTerm, limit)
	if err != nil {
		return nil, err
	}
	limited := len(users) > limit
	if limited {
		users = users[:limit]
	}
	return map[string]any{"results": users, "limited": limited}, nil
}

// beforeOwnMembership runs the account rules for a membership change sent
// through setMembership: a guest may only join rooms whose
// m.room.guest_access is can_join, and a user's own join carries their
// profile.
func (s *Profiles) BeforeOwnMembership(ctx context.Context, dev *httpapi.Device, roomID, target, membership string, content map[string]any) error {
	if membership != store.MembershipJoin || target != dev.UserID {
		return nil
	}
	if dev.IsGuest {
		open, err := s.guestsMayJoin(ctx, roomID)
		if err != nil {
			return err
		}
		if !open {
			return httpapi.GuestForbidden("Guests may not join this room")
		}
	}
	s.addProfileToJoin(ctx, target, content)
	return nil
}

// addProfileToCreatorJoin puts the creator's profile into their join
// event among a new room's initial events.
func (s *Profiles) AddProfileToCreatorJoin(ctx context.Context, creator string, events []*roomserverv1.EventTemplate) error {
	for _, ev := range events {
		if ev.GetType() != "m.room.member" || ev.GetStateKey() != creator {
			continue
		}
		var content map[string]any
		if err := json.Unmarshal(ev.GetContent(), &content); err != nil {
			return err
		}
		if content["membership"] != store.MembershipJoin {
			continue
		}
		s.addProfileToJoin(ctx, creator, content)
		raw, err := json.Marshal(content)
		if err != nil {
			return err
		}
		ev.Content = raw
	}
	return nil
}
