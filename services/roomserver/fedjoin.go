package roomserver

// The resident server's side of remote memberships: templates for
// make_join, make_leave and make_knock, and this server's signature on a
// remote user's join (send_join), with the restricted-room checks when this
// server authorises the join.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// residentJoins holds the resident server's side of remote memberships
// (a view of the Service).
type residentJoins struct{ *Service }

// refusal is a membership the rules do not allow, with the reason.
type refusal struct {
	code   roomserverv1.Refusal
	reason string
}

func refuse(code roomserverv1.Refusal, format string, args ...any) *refusal {
	return &refusal{code: code, reason: fmt.Sprintf(format, args...)}
}

// templateKey signs template events only so that gomatrixserverlib can
// build them for the auth check; those events are never stored or sent.
type templateKey struct {
	id  gomatrixserverlib.KeyID
	key ed25519.PrivateKey
}

func newTemplateKey() (templateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	return templateKey{id: "ed25519:template", key: key}, err
}

// residentRoom returns the room when this server is in it (a local member
// is joined), or a NOT_IN_ROOM refusal.
func (s residentJoins) residentRoom(ctx context.Context, roomID string) (store.Room, *refusal, error) {
	room, err := s.room(ctx, roomID)
	if errors.Is(err, store.ErrNotFound) {
		return room, refuse(roomserverv1.Refusal_REFUSAL_NOT_IN_ROOM, "unknown room %s", roomID), nil
	} else if err != nil {
		return room, nil, err
	}
	members, err := s.joinedLocalMembers(ctx, s.store.Queries, room)
	if err != nil {
		return room, nil, err
	}
	if len(members) == 0 {
		return room, refuse(roomserverv1.Refusal_REFUSAL_NOT_IN_ROOM, "this server is not in room %s", roomID), nil
	}
	return room, nil, nil
}

// makeMembershipEvent builds the template a remote server's user signs for
// make_join, make_leave or make_knock.
func (s residentJoins) makeMembershipEvent(ctx context.Context, req *roomserverv1.MakeMembershipEventRequest) (*roomserverv1.MakeMembershipEventResponse, error) {
	membership := req.GetMembership()
	if !slices.Contains([]string{spec.Join, spec.Leave, spec.Knock}, membership) {
		return nil, fmt.Errorf("%w: membership must be join, leave or knock, not %q", ErrBadRequest, membership)
	}
	user, err := spec.NewUserID(req.GetUserId(), true)
	if err != nil {
		return nil, fmt.Errorf("%w: invalid user ID %q", ErrBadRequest, req.GetUserId())
	}
	refused := func(r *refusal, version string) (*roomserverv1.MakeMembershipEventResponse, error) {
		return &roomserverv1.MakeMembershipEventResponse{RoomVersion: version, Refusal: r.code, Reason: r.reason}, nil
	}
	if user.Domain() == s.serverName {
		return refused(refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "%s is a user of this server", user.String()), "")
	}
	if origin := req.GetOrigin(); origin != "" && spec.ServerName(origin) != user.Domain() {
		return refused(refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "the %s must be asked for by the server of the user: %s is not %s",
			membership, origin, user.Domain()), "")
	}
	room, r, err := s.residentRoom(ctx, req.GetRoomId())
	if err != nil || r != nil {
		if r != nil {
			return refused(r, "")
		}
		return nil, err
	}
	if membership != spec.Leave {
		supported := req.GetSupportedRoomVersions()
		if len(supported) == 0 {
			supported = []string{string(gomatrixserverlib.RoomVersionV1)}
		}
		if !slices.Contains(supported, room.Version) {
			return refused(refuse(roomserverv1.Refusal_REFUSAL_INCOMPATIBLE_ROOM_VERSION,
				"the room's version %s is not one the server supports", room.Version), room.Version)
		}
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	if err != nil {
		return nil, err
	}
	if membership == spec.Leave {
		// The auth rules let a user leave only from invite, join or knock;
		// gomatrixserverlib also lets leave follow leave (Synapse accepted
		// such events once), which would make a template of nothing.
		current, err := s.currentMember(ctx, room, user.String())
		if err != nil {
			return nil, err
		}
		if !slices.Contains([]string{spec.Invite, spec.Join, spec.Knock}, current) {
			return refused(refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "%s is not invited to, joined to or knocking on the room", user.String()), room.Version)
		}
	}
	content := map[string]any{"membership": membership}
	if membership == spec.Join {
		via, r, err := s.restrictedVia(ctx, s.store.Queries, room, user.String())
		if err != nil {
			return nil, err
		}
		if r != nil {
			return refused(r, room.Version)
		}
		if via != "" {
			content[authorisedViaKey] = via
		}
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	stateKey := user.String()
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: user.String(), RoomID: room.RoomID, Type: spec.MRoomMember, StateKey: &stateKey,
		Content: raw, Version: verImpl,
	}
	_, provider, err := s.fillOnCurrent(ctx, s.store.Queries, room, pe)
	if err != nil {
		return nil, err
	}
	built, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), s.serverName, s.templateKey.id, s.templateKey.key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if err := checkAuth(built, provider); err != nil {
		return refused(refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "the auth rules refuse the %s: %v", membership, err), room.Version)
	}
	template, err := eventTemplate(built)
	if err != nil {
		return nil, err
	}
	return &roomserverv1.MakeMembershipEventResponse{RoomVersion: room.Version, EventTemplate: template}, nil
}

// eventTemplate is a built event without what the joining server adds
// itself (hashes, signatures, event ID): prev_events and auth_events in the
// room version's format, depth, origin (this server) and origin_server_ts.
func eventTemplate(built gomatrixserverlib.PDU) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(built.JSON(), &obj); err != nil {
		return nil, err
	}
	for _, k := range []string{"hashes", "signatures", "unsigned", "event_id"} {
		delete(obj, k)
	}
	return json.Marshal(obj)
}

// restrictedVia decides a remote user's join into a restricted room (room
// versions 8 on, join rule restricted or knock_restricted) with
// gomatrixserverlib's CheckRestrictedJoin: the local user to name in
// join_authorised_via_users_server ("" when the room is not restricted or
// the user is invited or joined already), or the spec's refusal: this
// server is in none of the allowed rooms (UNABLE_TO_AUTHORISE_JOIN), the
// user meets a condition but no local user may invite
// (UNABLE_TO_GRANT_JOIN), the user meets none (FORBIDDEN).
func (s residentJoins) restrictedVia(ctx context.Context, q *store.Queries, room store.Room, userID string) (string, *refusal, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	if err != nil || verImpl.CheckRestrictedJoinsAllowed() != nil {
		return "", nil, err
	}
	roomID, err := spec.NewRoomID(room.RoomID)
	if err != nil {
		return "", nil, err
	}
	querier := &restrictedQuerier{s: s.Service, q: q, room: room}
	current, err := querier.CurrentStateEvent(ctx, *roomID, spec.MRoomMember, userID)
	if err != nil {
		return "", nil, err
	}
	if current != nil {
		if m, _ := current.Membership(); m == spec.Join {
			return "", nil, nil
		}
	}
	via, err := verImpl.CheckRestrictedJoin(ctx, s.serverName, querier, *roomID, spec.SenderID(userID))
	var merr spec.MatrixError
	switch {
	case err == nil:
		return via, nil, nil
	case !errors.As(err, &merr):
		return "", nil, err
	case merr.ErrCode == spec.ErrorUnableToAuthoriseJoin:
		return "", refuse(roomserverv1.Refusal_REFUSAL_UNABLE_TO_AUTHORISE_JOIN, "%s", merr.Err), nil
	case merr.ErrCode != spec.ErrorForbidden:
		return "", nil, err
	}
	// Refused: because the user meets no condition, or because no local
	// user may invite although the user meets one?
	rules, err := querier.CurrentStateEvent(ctx, *roomID, spec.MRoomJoinRules, "")
	if err != nil || rules == nil {
		return "", refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "%s", merr.Err), err
	}
	var content gomatrixserverlib.JoinRuleContent
	_ = json.Unmarshal(rules.Content(), &content)
	for _, rule := range content.Allow {
		allowed, err := spec.NewRoomID(rule.RoomID)
		if rule.Type != spec.MRoomMembership || err != nil {
			continue
		}
		info, err := querier.RestrictedRoomJoinInfo(ctx, *allowed, spec.SenderID(userID), s.serverName)
		if err != nil {
			return "", nil, err
		}
		if info.LocalServerInRoom && info.UserJoinedToRoom {
			return "", refuse(roomserverv1.Refusal_REFUSAL_UNABLE_TO_GRANT_JOIN,
				"%s may join through %s, but no user of this server may invite", userID, allowed.String()), nil
		}
	}
	return "", refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "%s", merr.Err), nil
}

// signJoin is the resident server's check and signature of a remote user's
// join (send_join). A join naming one of this server's users in
// join_authorised_via_users_server is signed only when the user meets the
// room's conditions and the named user is joined here and may invite.
func (s residentJoins) signJoin(ctx context.Context, req *roomserverv1.SignJoinRequest) (*roomserverv1.SignJoinResponse, error) {
	room, r, err := s.residentRoom(ctx, req.GetRoomId())
	if err != nil {
		return nil, err
	}
	refused := func(r *refusal) (*roomserverv1.SignJoinResponse, error) {
		return &roomserverv1.SignJoinResponse{Refusal: r.code, Reason: r.reason}, nil
	}
	if r != nil {
		return refused(r)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	if err != nil {
		return nil, err
	}
	ev, bad := parseUntrusted(verImpl, req.GetEventJson())
	if bad != nil {
		return nil, fmt.Errorf("%w: %s", ErrBadRequest, bad.reason)
	}
	membership, _ := ev.Membership()
	sender := ev.SenderID().ToUserID()
	switch {
	case ev.RoomID().String() != room.RoomID:
		return nil, fmt.Errorf("%w: the join is for room %s, not %s", ErrBadRequest, ev.RoomID().String(), room.RoomID)
	case ev.Type() != spec.MRoomMember || membership != spec.Join:
		return nil, fmt.Errorf("%w: not a join event", ErrBadRequest)
	case !ev.StateKeyEquals(string(ev.SenderID())):
		return nil, fmt.Errorf("%w: the state key of a join must be its sender", ErrBadRequest)
	case sender == nil || sender.Domain() == s.serverName:
		return nil, fmt.Errorf("%w: the join's sender %q is not a remote user", ErrBadRequest, ev.SenderID())
	}
	current, err := s.currentMember(ctx, room, string(ev.SenderID()))
	if err != nil {
		return nil, err
	}
	if current == spec.Ban {
		return refused(refuse(roomserverv1.Refusal_REFUSAL_FORBIDDEN, "%s is banned", ev.SenderID()))
	}
	var content struct {
		Via string `json:"join_authorised_via_users_server"`
	}
	_ = json.Unmarshal(ev.Content(), &content)
	if content.Via != "" {
		if r, err := s.checkAuthoriser(ctx, room, string(ev.SenderID()), content.Via); err != nil || r != nil {
			if r != nil {
				return refused(r)
			}
			return nil, err
		}
	}
	signed, err := s.countersign(ctx, verImpl, ev)
	if err != nil {
		return nil, err
	}
	return &roomserverv1.SignJoinResponse{EventJson: signed.JSON(), EventId: signed.EventID()}, nil
}

// currentMember returns a user's membership in the room's current state.
func (s residentJoins) currentMember(ctx context.Context, room store.Room, userID string) (string, error) {
	q := &restrictedQuerier{s: s.Service, q: s.store.Queries, room: room}
	roomID, err := spec.NewRoomID(room.RoomID)
	if err != nil {
		return "", err
	}
	ev, err := q.CurrentStateEvent(ctx, *roomID, spec.MRoomMember, userID)
	if err != nil || ev == nil {
		return "", err
	}
	m, _ := ev.Membership()
	return m, nil
}

// checkAuthoriser checks a join that names via (a user of this server) as
// its authorising user: the room must be restricted, the joining user must
// meet a condition, and via must be joined here and allowed to invite.
func (s residentJoins) checkAuthoriser(ctx context.Context, room store.Room, userID, via string) (*refusal, error) {
	u, err := spec.NewUserID(via, true)
	if err != nil || u.Domain() != s.serverName {
		return nil, fmt.Errorf("%w: the authorising user %q is not a user of this server", ErrBadRequest, via)
	}
	chosen, r, err := s.restrictedVia(ctx, s.store.Queries, room, userID)
	if err != nil || r != nil {
		return r, err
	}
	if chosen == "" {
		// Not restricted, or the user is invited or joined: the auth
		// rules decide, no authorising user needed.
		return nil, nil
	}
	if chosen == via {
		return nil, nil
	}
	// Another local user would do; via must be allowed too.
	roomID, err := spec.NewRoomID(room.RoomID)
	if err != nil {
		return nil, err
	}
	q := &restrictedQuerier{s: s.Service, q: s.store.Queries, room: room}
	member, err := q.CurrentStateEvent(ctx, *roomID, spec.MRoomMember, via)
	if err != nil {
		return nil, err
	}
	if member != nil {
		if m, _ := member.Membership(); m == spec.Join {
			ok, err := s.mayInvite(ctx, q, *roomID, via)
			if err != nil || ok {
				return nil, err
			}
		}
	}
	return refuse(roomserverv1.Refusal_REFUSAL_UNABLE_TO_GRANT_JOIN, "%s is not joined or may not invite", via), nil
}

// mayInvite reports whether userID's power reaches the invite level (v12
// creators always may).
func (s residentJoins) mayInvite(ctx context.Context, q *restrictedQuerier, roomID spec.RoomID, userID string) (bool, error) {
	create, err := q.CurrentStateEvent(ctx, roomID, spec.MRoomCreate, "")
	if err != nil || create == nil {
		return false, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(create.Version())
	if err != nil {
		return false, err
	}
	if verImpl.PrivilegedCreators() && slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create), userID) {
		return true, nil
	}
	plEvent, err := q.CurrentStateEvent(ctx, roomID, spec.MRoomPowerLevels, "")
	if err != nil || plEvent == nil {
		return false, err
	}
	pl, err := plEvent.PowerLevels()
	if err != nil {
		return false, nil
	}
	return pl.UserLevel(spec.SenderID(userID)) >= pl.Invite, nil
}

// countersign adds this server's signature to an event, signed by the
// key-server (KeyService.SignJSON; a rare call, so it does not use the key
// the room-server holds for its own events): the signature covers the
// redacted event, as the spec's signing algorithm says.
func (s residentJoins) countersign(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	redacted, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return nil, err
	}
	resp, err := s.signer.SignJSON(ctx, redacted)
	if err != nil {
		return nil, fmt.Errorf("%w: SignJSON: %w", errKeyServer, err)
	}
	if spec.ServerName(resp.GetServerName()) != s.serverName {
		return nil, fmt.Errorf("key-server signs for %q, this room-server is %q", resp.GetServerName(), s.serverName)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(ev.JSON(), &obj); err != nil {
		return nil, err
	}
	sigs := map[string]map[string]string{}
	if raw, ok := obj["signatures"]; ok {
		if err := json.Unmarshal(raw, &sigs); err != nil {
			return nil, fmt.Errorf("%w: signatures: %v", ErrBadRequest, err)
		}
	}
	if sigs[resp.GetServerName()] == nil {
		sigs[resp.GetServerName()] = map[string]string{}
	}
	sigs[resp.GetServerName()][resp.GetKeyId()] = base64.RawStdEncoding.EncodeToString(resp.GetSignature())
	if obj["signatures"], err = json.Marshal(sigs); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	if raw, err = gomatrixserverlib.CanonicalJSON(raw); err != nil {
		return nil, err
	}
	signed, bad := parseUntrusted(verImpl, raw)
	if bad != nil {
		return nil, fmt.Errorf("%w: %s", ErrBadRequest, bad.reason)
	}
	return signed, nil
}
