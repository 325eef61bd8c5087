package rooms

// GET /rooms/{roomId}/members and /joined_members. State comes from the
// room-server (the graph's owner) as of the requested point: the current
// state, the state when a former member left, or the state at an `at`
// stream token.

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

var validMemberships = []string{store.MembershipJoin, store.MembershipInvite, store.MembershipKnock, store.MembershipLeave, store.MembershipBan}

// memberEvents returns the m.room.member events of the room's state at
// the point the user may see (and at most at the `at` position if set).
func (s *Rooms) memberEvents(r *http.Request, dev *httpapi.Device, roomID string, at int64) ([]*roomserverv1.Event, error) {
	acc, err := s.history.AccessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	req := &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: acc.AtEventID, After: acc.AtEventID != ""}
	if at >= 0 {
		if acc.Bound >= 0 {
			at = min(at, acc.Bound)
		}
		eventID, err := s.store.Reader().LatestEventAtOrBefore(r.Context(), roomID, at)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		req.EventId, req.After = eventID, true
	}
	resp, err := s.rooms.QueryState(r.Context(), req)
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryState", err, nil)
	}
	var out []*roomserverv1.Event
	for _, ev := range resp.GetState() {
		pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if pdu.Type() == spec.MRoomMember {
			out = append(out, ev)
		}
	}
	return out, nil
}

// members is GET /rooms/{roomId}/members. membership and not_membership
// combine as the spec says: a member is listed when its membership equals
// membership or differs from not_membership (each ignored when absent).
func (s *Rooms) members(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	want, notWant := q.Get("membership"), q.Get("not_membership")
	for _, v := range []string{want, notWant} {
		if v != "" && !slices.Contains(validMemberships, v) {
			return nil, matrixhttp.InvalidParam("Unknown membership " + v)
		}
	}
	at := int64(-1)
	if v := q.Get("at"); v != "" {
		tok, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid at token")
		}
		at = tok.Pos
	}
	events, err := s.memberEvents(r, dev, roomID, at)
	if err != nil {
		return nil, err
	}
	chunk := make([]json.RawMessage, 0, len(events))
	for _, ev := range events {
		pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		m := clientevent.MembershipOf(pdu)
		keep := want == "" && notWant == ""
		if want != "" && m == want {
			keep = true
		}
		if notWant != "" && m != notWant {
			keep = true
		}
		if !keep {
			continue
		}
		ce := pkgce.NewClientEvent(pdu)
		ce.RoomID = roomID
		raw, err := ce.Marshal()
		if err != nil {
			return nil, err
		}
		chunk = append(chunk, raw)
	}
	return map[string]any{"chunk": chunk}, nil
}

// roomMember is one entry of /joined_members. Both fields are always
// present, null when the member event has none, as clients (matrix-nio
// among them) expect the keys.
type roomMember struct {
	DisplayName *string `json:"display_name"`
	AvatarURL   *string `json:"avatar_url"`
}

// joinedMembers is GET /rooms/{roomId}/joined_members. Only a current
// member may ask (the spec: "The current user must be in the room"): a
// former member gets 403, unlike /members, which shows the state at their
// leave.
func (s *Rooms) joinedMembers(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	m, err := s.rooms.QueryMembership(r.Context(), &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: dev.UserID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryMembership", err, nil)
	}
	if m.GetMembership() != store.MembershipJoin {
		return nil, matrixhttp.Forbidden("You aren't a member of the room")
	}
	events, err := s.memberEvents(r, dev, roomID, -1)
	if err != nil {
		return nil, err
	}
	joined := map[string]roomMember{}
	for _, ev := range events {
		pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if clientevent.MembershipOf(pdu) != store.MembershipJoin || pdu.StateKey() == nil {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(pdu.Content(), &c)
		joined[*pdu.StateKey()] = roomMember{DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
	}
	return map[string]any{"joined": joined}, nil
}
