package clientapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/sjson"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// clientEvent is the client-server API's event format ("ClientEvent").
// The stored copy has no room_id; it is added where the API wants it.
type clientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`
	// Redacts names the target of an m.room.redaction: top-level in room
	// versions before 11, in content from 11 on. The client API serves it
	// in both places in every version (newClientEvent).
	Redacts string `json:"redacts,omitempty"`
}

// parsePDU parses a committed event of the given room version.
func parsePDU(roomVersion string, eventJSON []byte) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSON(eventJSON, false)
}

// parseOutputPDU is parsePDU for an event the room-server published with
// its ID: taking that ID saves hashing the event again (the reference hash
// was ~2 % of the server's CPU in the room event consumer, #5).
func parseOutputPDU(roomVersion, eventID string, eventJSON []byte) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSONWithEventID(eventID, eventJSON, false)
}

// newClientEvent takes the client-visible fields of a PDU.
func newClientEvent(pdu gomatrixserverlib.PDU) clientEvent {
	ce := clientEvent{
		Content:        json.RawMessage(pdu.Content()),
		EventID:        pdu.EventID(),
		OriginServerTS: int64(pdu.OriginServerTS()),
		Sender:         string(pdu.SenderID()),
		StateKey:       pdu.StateKey(),
		Type:           pdu.Type(),
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	if u := pdu.Unsigned(); len(u) > 0 && isObject(u) && string(u) != "{}" {
		ce.Unsigned = json.RawMessage(u)
	}
	if pdu.Type() == "m.room.redaction" {
		// The spec (room version 11, "Moving the redacts property") asks
		// servers to serve a redaction's target both top-level and in
		// content over the client-server API, in every room version, for
		// older and newer clients alike: matrix-js-sdk, for one, reads only
		// the top-level key to apply a redaction it sees in /sync.
		ce.Redacts = redactionTarget(pdu)
		ce.Content = withContentRedacts(ce.Content, ce.Redacts)
	}
	return ce
}

// redactionTarget returns the event a redaction redacts, from where its room
// version keeps it: top-level before v11, content.redacts from v11 on
// (gomatrixserverlib's Redacts reads only the former).
func redactionTarget(pdu gomatrixserverlib.PDU) string {
	switch pdu.Version() {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		return pdu.Redacts()
	}
	var c struct {
		Redacts string `json:"redacts"`
	}
	_ = json.Unmarshal(pdu.Content(), &c)
	return c.Redacts
}

// withContentRedacts returns content with "redacts" set to target.
func withContentRedacts(content json.RawMessage, target string) json.RawMessage {
	var c map[string]json.RawMessage
	if target == "" || json.Unmarshal(content, &c) != nil || c == nil {
		return content
	}
	var have string
	if json.Unmarshal(c["redacts"], &have) == nil && have == target {
		return content
	}
	c["redacts"], _ = json.Marshal(target)
	raw, err := json.Marshal(c)
	if err != nil {
		return content
	}
	return raw
}

func (ce clientEvent) marshal() ([]byte, error) { return json.Marshal(ce) }

func isObject(raw []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil
}

// membershipOf returns content.membership of an m.room.member event.
func membershipOf(pdu gomatrixserverlib.PDU) string {
	if pdu.Type() != "m.room.member" {
		return ""
	}
	m, err := pdu.Membership()
	if err != nil {
		return ""
	}
	return m
}

// renderEvent returns a stored client event as the API shows it: with
// room_id when roomID is set, and unsigned.transaction_id when txnID is
// set (the requesting device sent it).
func renderEvent(stored []byte, roomID, txnID string) (json.RawMessage, error) {
	return renderEventAs(stored, roomID, txnID, "")
}

// renderEventAs is renderEvent with unsigned.membership, the requesting
// user's membership at the event, when membership is set.
func renderEventAs(stored []byte, roomID, txnID, membership string) (json.RawMessage, error) {
	if roomID == "" && txnID == "" {
		if membership == "" {
			return json.RawMessage(stored), nil
		}
		// The common /sync case: one key into unsigned, without decoding
		// the whole event.
		out, err := sjson.SetBytes(stored, "unsigned.membership", membership)
		if err != nil {
			return nil, fmt.Errorf("set unsigned.membership: %w", err)
		}
		return out, nil
	}
	var ce clientEvent
	if err := json.Unmarshal(stored, &ce); err != nil {
		return nil, fmt.Errorf("decode stored event: %w", err)
	}
	ce.RoomID = roomID
	if txnID != "" || membership != "" {
		unsigned := map[string]any{}
		if len(ce.Unsigned) > 0 {
			_ = json.Unmarshal(ce.Unsigned, &unsigned)
		}
		if txnID != "" {
			unsigned["transaction_id"] = txnID
		}
		if membership != "" {
			unsigned["membership"] = membership
		}
		raw, err := json.Marshal(unsigned)
		if err != nil {
			return nil, err
		}
		ce.Unsigned = raw
	}
	return ce.marshal()
}

// renderFor renders a stored event for the requesting device.
func renderFor(e store.StoredEvent, dev *device, withRoomID bool) (json.RawMessage, error) {
	txn := ""
	if e.TxnID != "" && e.Sender == dev.UserID && e.TxnDeviceID == dev.DeviceID {
		txn = e.TxnID
		if e.Type == "m.room.redaction" {
			txn = strings.TrimPrefix(txn, redactTxnPrefix) // see redact
		}
	}
	room := ""
	if withRoomID {
		room = e.RoomID
	}
	return renderEventAs(e.JSON, room, txn, e.Membership)
}

// renderPDU converts a room-server Event into client format.
func renderPDU(ev *roomserverv1.Event, withRoomID bool) (json.RawMessage, error) {
	pdu, err := parsePDU(ev.GetRoomVersion(), ev.GetEventJson())
	if err != nil {
		return nil, fmt.Errorf("parse event %s: %w", ev.GetEventId(), err)
	}
	ce := newClientEvent(pdu)
	if withRoomID {
		ce.RoomID = ev.GetRoomId()
	}
	return ce.marshal()
}

// renderPDUs renders a list of room-server events for clients.
func renderPDUs(evs []*roomserverv1.Event, withRoomID bool) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		raw, err := renderPDU(ev, withRoomID)
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// eventIDResponse is the body of PUT send and PUT state.
type eventIDResponse struct {
	EventID string `json:"event_id"`
}

// send is PUT /rooms/{roomId}/send/{eventType}/{txnId}. The room-server
// deduplicates by (device, txnId), so a retried request returns the first
// event's ID.
func (s *Service) send(r *http.Request, dev *device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	evType, err := pathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := pathParam(r, "txnId")
	if err != nil {
		return nil, err
	}
	if evType == "" || txnID == "" {
		return nil, matrixhttp.InvalidParam("Event type and transaction ID must not be empty")
	}
	content, err := readObject(r, bodyRequired)
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
func (s *Service) putState(r *http.Request, dev *device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	evType, err := pathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := pathParam(r, "stateKey")
	if err != nil {
		return nil, err
	}
	if evType == "" {
		return nil, matrixhttp.InvalidParam("Event type must not be empty")
	}
	content, err := readObject(r, bodyRequired)
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
func (s *Service) getState(r *http.Request, dev *device) (any, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	evType, err := pathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := pathParam(r, "stateKey")
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
		pdu, err := parsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if pdu.Type() != evType || !pdu.StateKeyEquals(stateKey) {
			continue
		}
		if format == "event" {
			ce := newClientEvent(pdu)
			ce.RoomID = roomID
			return ce, nil
		}
		return json.RawMessage(newClientEvent(pdu).Content), nil
	}
	return nil, matrixhttp.NotFound("Event not found")
}

// getAllState is GET /rooms/{roomId}/state.
func (s *Service) getAllState(r *http.Request, dev *device) (any, error) {
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
func (s *Service) messages(r *http.Request, dev *device) (any, error) {
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
	limit, err := queryInt(r, "limit", 10)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	limit = min(limit, maxMessagesLimit)
	to := int64(-1)
	if v := q.Get("to"); v != "" {
		t, err := parseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid to token")
		}
		to = t.pos
	}
	var from streamToken
	hasFrom := q.Get("from") != ""
	if hasFrom {
		if from, err = parseStreamToken(q.Get("from")); err != nil {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
	}
	evFilter, err := parseRoomEventFilter(q.Get("filter"))
	if err != nil {
		return nil, err
	}
	acc, err := s.accessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	reader := s.store.Reader()
	if !hasFrom && dir == store.Backward {
		if from.pos, err = reader.MaxPos(r.Context()); err != nil {
			return nil, err
		}
	}
	page, err := reader.Messages(r.Context(), roomID, dir, from.pos, to, acc.bound, int(limit))
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
		resp.End = streamToken{pos: last}.String()
	}
	return resp, nil
}
