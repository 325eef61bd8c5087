package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// eventIDResponse is the body of PUT send and PUT state.
type eventIDResponse struct {
	EventID string `json:"event_id"`
}

// send is PUT /rooms/{roomId}/send/{eventType}/{txnId}. The room-server
// deduplicates by (device, txnId), so a retried request returns the first
// event's ID.
func (s *Service) send(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	evType, err := httpapi.PathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := httpapi.PathParam(r, "txnId")
	if err != nil {
		return nil, err
	}
	if evType == "" || txnID == "" {
		return nil, matrixhttp.InvalidParam("Event type and transaction ID must not be empty")
	}
	content, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	tmpl := &roomserverv1.EventTemplate{Type: evType, Content: content}
	if evType == "m.room.redaction" {
		var c struct {
			Redacts string `json:"redacts"`
		}
		_ = json.Unmarshal(content, &c)
		tmpl.Redacts = c.Redacts
		if err := s.suspendedRedaction(r, dev, roomID, c.Redacts); err != nil {
			return nil, err
		}
	}
	eventID, err := s.sendOwnEvent(r.Context(), &roomserverv1.SendEventRequest{
		RoomId:        roomID,
		Sender:        dev.UserID,
		Event:         tmpl,
		TransactionId: &roomserverv1.TransactionID{DeviceId: dev.DeviceID, TxnId: txnID},
	})
	if err != nil {
		return nil, err
	}
	return eventIDResponse{EventID: eventID}, nil
}

// putState is PUT /rooms/{roomId}/state/{eventType}/{stateKey}.
func (s *Service) putState(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	evType, err := httpapi.PathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := httpapi.PathParam(r, "stateKey")
	if err != nil {
		return nil, err
	}
	if evType == "" {
		return nil, matrixhttp.InvalidParam("Event type must not be empty")
	}
	content, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	if evType == "m.room.canonical_alias" && stateKey == "" {
		if err := s.checkCanonicalAlias(r, roomID, content); err != nil {
			return nil, err
		}
	}
	eventID, err := s.sendOwnEvent(r.Context(), &roomserverv1.SendEventRequest{
		RoomId: roomID,
		Sender: dev.UserID,
		Event:  &roomserverv1.EventTemplate{Type: evType, StateKey: &stateKey, Content: content},
	})
	if err != nil {
		return nil, err
	}
	return eventIDResponse{EventID: eventID}, nil
}

// roomAccess is what part of a room a user may read.
type roomAccess struct {
	// bound is the last stream position the user may see; -1: no bound.
	bound int64
	// atEventID, when set, is the user's leave event: state is read as of it.
	atEventID string
}

// accessRoom checks that the user is, or was, joined to the room. The
// client-API's own membership copy is asked first; when it says no, the
// room-server (which may be ahead of the copy) decides.
func (s *Service) accessRoom(r *http.Request, userID, roomID string) (roomAccess, error) {
	ctx := r.Context()
	m, err := s.store.Reader().Membership(ctx, userID, roomID)
	switch {
	case err == nil && m.Membership == store.MembershipJoin:
		return roomAccess{bound: -1}, nil
	case err == nil && (m.Membership == store.MembershipLeave || m.Membership == store.MembershipBan) && m.JoinPos > 0:
		acc := roomAccess{bound: m.Pos, atEventID: m.EventID}
		// Events of a world_readable room are readable by anyone, so the
		// leave does not bound them (the per-event rules still apply).
		if vis, err := s.store.Reader().CurrentVisibility(ctx, roomID); err != nil {
			return roomAccess{}, err
		} else if vis == store.VisibilityWorldReadable {
			acc.bound = -1
		}
		return acc, nil
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return roomAccess{}, err
	}
	resp, err := s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: userID})
	if err != nil {
		return roomAccess{}, s.fromGRPC(ctx, "QueryMembership", err, nil)
	}
	if resp.GetMembership() == store.MembershipJoin {
		return roomAccess{bound: -1}, nil
	}
	// Anyone may read a world_readable room; the per-event rules decide
	// which events (see visibility.go).
	if vis, err := s.store.Reader().CurrentVisibility(ctx, roomID); err != nil {
		return roomAccess{}, err
	} else if vis == store.VisibilityWorldReadable {
		return roomAccess{bound: -1}, nil
	}
	return roomAccess{}, matrixhttp.Forbidden("You aren't a member of the room")
}

// getState is GET /rooms/{roomId}/state/{eventType}/{stateKey}.
func (s *Service) getState(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	evType, err := httpapi.PathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := httpapi.PathParam(r, "stateKey")
	if err != nil {
		return nil, err
	}
	format := r.URL.Query().Get("format")
	if format != "" && format != "content" && format != "event" {
		return nil, matrixhttp.InvalidParam("format must be content or event")
	}
	acc, err := s.accessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	resp, err := s.rooms.QueryState(r.Context(), &roomserverv1.QueryStateRequest{
		RoomId:  roomID,
		EventId: acc.atEventID,
		After:   acc.atEventID != "",
		Filter:  []*roomserverv1.StateKeyTuple{{Type: evType, StateKey: stateKey}},
	})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryState", err, nil)
	}
	for _, ev := range resp.GetState() {
		pdu, err := clientevent.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if pdu.Type() != evType || !pdu.StateKeyEquals(stateKey) {
			continue
		}
		if format == "event" {
			ce := clientevent.NewClientEvent(pdu)
			ce.RoomID = roomID
			return ce, nil
		}
		return json.RawMessage(clientevent.NewClientEvent(pdu).Content), nil
	}
	return nil, matrixhttp.NotFound("Event not found")
}

// getAllState is GET /rooms/{roomId}/state.
func (s *Service) getAllState(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	acc, err := s.accessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	return s.roomStateFor(r.Context(), roomID, acc)
}

// messagesResponse is the body of GET /rooms/{roomId}/messages.
type messagesResponse struct {
	Start string            `json:"start"`
	End   string            `json:"end,omitempty"`
	Chunk []json.RawMessage `json:"chunk"`
	State []json.RawMessage `json:"state"`
}

// maxMessagesLimit caps /messages' limit.
const maxMessagesLimit = 1000

// messages is GET /rooms/{roomId}/messages: pagination over the
// client-API's event stream, with the same tokens as /sync.
func (s *Service) messages(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	var dir store.Direction
	switch q.Get("dir") {
	case "b":
		dir = store.Backward
	case "f":
		dir = store.Forward
	case "":
		return nil, matrixhttp.MissingParam("dir is required")
	default:
		return nil, matrixhttp.InvalidParam("dir must be b or f")
	}
	limit, err := httpapi.QueryInt(r, "limit", 10)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	limit = min(limit, maxMessagesLimit)
	to := int64(-1)
	if v := q.Get("to"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid to token")
		}
		to = t.Pos
	}
	var from clientevent.StreamToken
	hasFrom := q.Get("from") != ""
	if hasFrom {
		if from, err = clientevent.ParseStreamToken(q.Get("from")); err != nil {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
	}
	evFilter, err := clientevent.ParseRoomEventFilter(q.Get("filter"))
	if err != nil {
		return nil, err
	}
	acc, err := s.accessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	reader := s.store.Reader()
	if !hasFrom && dir == store.Backward {
		if from.Pos, err = reader.MaxPos(r.Context()); err != nil {
			return nil, err
		}
	}
	page, err := reader.Messages(r.Context(), roomID, dir, from.Pos, to, acc.bound, int(limit))
	if err != nil {
		return nil, err
	}
	// Pages are cut before filtering, so tokens stay continuous; a page may
	// hold fewer events than limit (or none) and still have an end token.
	visible, err := s.visibleEvents(r.Context(), reader, dev.UserID, roomID, page.Events, evFilter)
	if err != nil {
		return nil, err
	}
	resp := messagesResponse{Start: from.String(), State: []json.RawMessage{}}
	if resp.Chunk, err = s.renderAll(r.Context(), reader, dev, visible, true); err != nil {
		return nil, err
	}
	if evFilter.LazyLoadMembers {
		if resp.State, err = s.lazyMembers(r.Context(), roomID, visible); err != nil {
			return nil, err
		}
	}
	if page.More && len(page.Events) > 0 {
		last := page.Events[len(page.Events)-1].Pos
		if dir == store.Backward {
			last--
		}
		resp.End = clientevent.StreamToken{Pos: last}.String()
	}
	return resp, nil
}
