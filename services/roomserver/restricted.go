package roomserver

// Restricted joins (room versions 8+): a user may join a room whose join
// rule is "restricted" or "knock_restricted" when they are joined to one of
// the rooms its "allow" list names. The joining server proves it checked by
// naming, in join_authorised_via_users_server, one of its users who is
// joined to the room and may invite; the auth rules then check that user.
// For local joins this server is that server, so the room-server fills the
// field in when it builds the join. gomatrixserverlib's CheckRestrictedJoin
// decides; restrictedQuerier answers its questions from our own state.

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// authorisedViaKey is the membership content key naming the authorising user.
const authorisedViaKey = "join_authorised_via_users_server"

// authoriseLocalMember prepares a local m.room.member event. A client never
// chooses join_authorised_via_users_server (it would let anyone name a
// moderator): the key is dropped, and for a self-join into a restricted
// room it is set to a local user the rules accept. When the user may not
// join, the join is built without the key and the auth rules refuse it.
func (s *Service) authoriseLocalMember(ctx context.Context, w *writeTx, room store.Room, sender string, t template) (template, error) {
	if t.Type != spec.MRoomMember || t.StateKey == nil {
		return t, nil
	}
	var content map[string]json.RawMessage
	if err := json.Unmarshal(t.Content, &content); err != nil {
		return t, fmt.Errorf("%w: m.room.member content: %v", ErrBadRequest, err)
	}
	_, had := content[authorisedViaKey]
	delete(content, authorisedViaKey)
	var membership string
	_ = json.Unmarshal(content["membership"], &membership)
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	if err != nil {
		return t, err
	}
	if membership == spec.Join && *t.StateKey == sender && verImpl.CheckRestrictedJoinsAllowed() == nil {
		roomID, err := spec.NewRoomID(room.RoomID)
		if err != nil {
			return t, err
		}
		q := &restrictedQuerier{s: s, q: w.Queries, room: room}
		current, err := q.CurrentStateEvent(ctx, *roomID, spec.MRoomMember, sender)
		if err != nil {
			return t, err
		}
		if current != nil {
			if m, _ := current.Membership(); m == spec.Join {
				// A joined member updating their profile needs no authoriser.
				return stripAuthorisedVia(t, content, had)
			}
		}
		via, err := verImpl.CheckRestrictedJoin(ctx, s.serverName, q, *roomID, spec.SenderID(sender))
		if err != nil {
			// Not allowed by any allow rule: the error names why.
			return t, fmt.Errorf("%w: %v", ErrForbidden, err)
		}
		if via != "" {
			content[authorisedViaKey], _ = json.Marshal(via)
			had = true
		}
	}
	return stripAuthorisedVia(t, content, had)
}

// stripAuthorisedVia re-encodes content when the authorising key was
// present or set (changed is true); otherwise t is left untouched.
func stripAuthorisedVia(t template, content map[string]json.RawMessage, changed bool) (template, error) {
	if !changed {
		return t, nil
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return t, err
	}
	t.Content = raw
	return t, nil
}

// restrictedQuerier implements gomatrixserverlib.RestrictedRoomJoinQuerier
// for a join into room, reading it through q (its write transaction, or
// the pool for a remote server's make_join).
type restrictedQuerier struct {
	s    *Service
	q    *store.Queries
	room store.Room
}

var _ gomatrixserverlib.RestrictedRoomJoinQuerier = (*restrictedQuerier)(nil)

// currentEvent returns one event of a room's current state, or nil.
func (q *restrictedQuerier) currentEvent(ctx context.Context, sq *store.Queries, room store.Room, evType, stateKey string) (gomatrixserverlib.PDU, error) {
	sn, err := q.s.loadState(ctx, sq, room.SnapshotNID)
	if err != nil {
		return nil, err
	}
	pdus, err := q.s.stateEventsFor(ctx, sq, sn.state, []gomatrixserverlib.StateKeyTuple{{EventType: evType, StateKey: stateKey}})
	if err != nil || len(pdus) == 0 {
		return nil, err
	}
	return pdus[0], nil
}

func (q *restrictedQuerier) CurrentStateEvent(ctx context.Context, roomID spec.RoomID, evType, stateKey string) (gomatrixserverlib.PDU, error) {
	if roomID.String() != q.room.RoomID {
		return nil, fmt.Errorf("unexpected room %s", roomID.String())
	}
	return q.currentEvent(ctx, q.q, q.room, evType, stateKey)
}

func (q *restrictedQuerier) InvitePending(ctx context.Context, roomID spec.RoomID, senderID spec.SenderID) (bool, error) {
	ev, err := q.CurrentStateEvent(ctx, roomID, spec.MRoomMember, string(senderID))
	if err != nil || ev == nil {
		return false, err
	}
	m, _ := ev.Membership()
	return m == spec.Invite, nil
}

// RestrictedRoomJoinInfo answers for an allowed room: whether this server
// is in it, whether the user is joined to it, and which local users are
// joined to the room being joined (the candidates for authorising).
func (q *restrictedQuerier) RestrictedRoomJoinInfo(ctx context.Context, allowed spec.RoomID, senderID spec.SenderID, _ spec.ServerName) (*gomatrixserverlib.RestrictedRoomJoinInfo, error) {
	info := &gomatrixserverlib.RestrictedRoomJoinInfo{}
	other, err := q.s.store.Room(ctx, allowed.String())
	if err != nil {
		// Unknown room: this server is not in it.
		return info, nil
	}
	otherMembers, err := q.s.joinedLocalMembers(ctx, q.s.store.Queries, other)
	if err != nil {
		return nil, err
	}
	info.LocalServerInRoom = len(otherMembers) > 0
	// The user may be of another server (a remote user's make_join): read
	// their membership, not only the local members.
	own, err := q.currentEvent(ctx, q.s.store.Queries, other, spec.MRoomMember, string(senderID))
	if err != nil {
		return nil, err
	}
	if own != nil {
		m, _ := own.Membership()
		info.UserJoinedToRoom = m == spec.Join
	}
	if info.JoinedUsers, err = q.s.joinedLocalMembers(ctx, q.q, q.room); err != nil {
		return nil, err
	}
	return info, nil
}

// joinedLocalMembers returns the join events of the room's local members.
func (s *Service) joinedLocalMembers(ctx context.Context, sq *store.Queries, room store.Room) ([]gomatrixserverlib.PDU, error) {
	sn, err := s.loadState(ctx, sq, room.SnapshotNID)
	if err != nil {
		return nil, err
	}
	nids := make([]int64, 0, len(sn.state))
	for _, ev := range sn.state {
		nids = append(nids, ev)
	}
	entries, err := s.loadEvents(ctx, sq, nids)
	if err != nil {
		return nil, err
	}
	var out []gomatrixserverlib.PDU
	for _, e := range entries {
		if e.pdu.Type() != spec.MRoomMember || e.pdu.StateKey() == nil {
			continue
		}
		if m, _ := e.pdu.Membership(); m != spec.Join {
			continue
		}
		u, err := spec.NewUserID(*e.pdu.StateKey(), true)
		if err != nil || u.Domain() != s.serverName {
			continue
		}
		out = append(out, e.pdu)
	}
	return out, nil
}
