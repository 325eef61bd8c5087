// Package clientevent is the client-API's vocabulary for events as clients
// see them: the client-server event format and its rendering, stream
// tokens, filters, ignore lists, and what the room event consumer extracts
// from an event (relations, search text, redacted copies). It holds no
// state and serves no endpoint.
package clientevent

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// ClientEvent is the client-server API's event format ("ClientEvent").
// The stored copy has no room_id; it is added where the API wants it.
type ClientEvent struct {
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
	// in both places in every version (NewClientEvent).
	Redacts string `json:"redacts,omitempty"`
}

// ParsePDU parses a committed event of the given room version.
func ParsePDU(roomVersion string, eventJSON []byte) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSON(eventJSON, false)
}

// ParseOutputPDU is ParsePDU for an event the room-server published with
// its ID: taking that ID saves hashing the event again (the reference hash
// was ~2 % of the server's CPU in the room event consumer, #5).
func ParseOutputPDU(roomVersion, eventID string, eventJSON []byte) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSONWithEventID(eventID, eventJSON, false)
}

// NewClientEvent takes the client-visible fields of a PDU.
func NewClientEvent(pdu gomatrixserverlib.PDU) ClientEvent {
	ce := ClientEvent{
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
	if u := pdu.Unsigned(); len(u) > 0 && IsObject(u) && string(u) != "{}" {
		ce.Unsigned = json.RawMessage(u)
	}
	if pdu.Type() == "m.room.redaction" {
		// The spec (room version 11, "Moving the redacts property") asks
		// servers to serve a redaction's target both top-level and in
		// content over the client-server API, in every room version, for
		// older and newer clients alike: matrix-js-sdk, for one, reads only
		// the top-level key to apply a redaction it sees in /sync.
		ce.Redacts = RedactionTarget(pdu)
		ce.Content = WithContentRedacts(ce.Content, ce.Redacts)
	}
	return ce
}

// RedactionTarget returns the event a redaction redacts, from where its room
// version keeps it: top-level before v11, content.redacts from v11 on
// (gomatrixserverlib's Redacts reads only the former).
func RedactionTarget(pdu gomatrixserverlib.PDU) string {
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

// WithContentRedacts returns content with "redacts" set to target.
func WithContentRedacts(content json.RawMessage, target string) json.RawMessage {
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

func (ce ClientEvent) Marshal() ([]byte, error) { return json.Marshal(ce) }

func IsObject(raw []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil
}

// MembershipOf returns content.membership of an m.room.member event.
func MembershipOf(pdu gomatrixserverlib.PDU) string {
	if pdu.Type() != "m.room.member" {
		return ""
	}
	m, err := pdu.Membership()
	if err != nil {
		return ""
	}
	return m
}

// Render returns a stored client event as the API shows it: with
// room_id when roomID is set, and unsigned.transaction_id when txnID is
// set (the requesting device sent it).
func Render(stored []byte, roomID, txnID string) (json.RawMessage, error) {
	return RenderAs(stored, roomID, txnID, "")
}

// RenderAs is Render with unsigned.membership, the requesting
// user's membership at the event, when membership is set.
func RenderAs(stored []byte, roomID, txnID, membership string) (json.RawMessage, error) {
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
	var ce ClientEvent
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
	return ce.Marshal()
}

// RenderFor renders a stored event for the requesting device.
func RenderFor(e store.StoredEvent, dev *httpapi.Device, withRoomID bool) (json.RawMessage, error) {
	txn := ""
	if e.TxnID != "" && e.Sender == dev.UserID && e.TxnDeviceID == dev.DeviceID {
		txn = e.TxnID
		if e.Type == "m.room.redaction" {
			txn = strings.TrimPrefix(txn, RedactTxnPrefix) // see redact
		}
	}
	room := ""
	if withRoomID {
		room = e.RoomID
	}
	return RenderAs(e.JSON, room, txn, e.Membership)
}

// RenderPDU converts a room-server Event into client format.
func RenderPDU(ev *roomserverv1.Event, withRoomID bool) (json.RawMessage, error) {
	pdu, err := ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
	if err != nil {
		return nil, fmt.Errorf("parse event %s: %w", ev.GetEventId(), err)
	}
	ce := NewClientEvent(pdu)
	if withRoomID {
		ce.RoomID = ev.GetRoomId()
	}
	return ce.Marshal()
}

// RenderPDUs renders a list of room-server events for clients.
func RenderPDUs(evs []*roomserverv1.Event, withRoomID bool) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		raw, err := RenderPDU(ev, withRoomID)
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// StrippedStateTypes are the state events shown to invitees.
var StrippedStateTypes = []string{
	"m.room.create", "m.room.name", "m.room.avatar", "m.room.topic",
	"m.room.join_rules", "m.room.canonical_alias", "m.room.encryption",
}

// EventList is {"events": [...]}; it never encodes events as null.
type EventList struct {
	Events []json.RawMessage `json:"events"`
}

func EmptyEvents() EventList { return EventList{Events: []json.RawMessage{}} }

// StrippedEvent reduces a stored client event to stripped state.
func StrippedEvent(stored []byte) (json.RawMessage, error) {
	var ce ClientEvent
	if err := json.Unmarshal(stored, &ce); err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Content  json.RawMessage `json:"content"`
		Sender   string          `json:"sender"`
		StateKey *string         `json:"state_key"`
		Type     string          `json:"type"`
	}{ce.Content, ce.Sender, ce.StateKey, ce.Type})
}

// ServerOf is the server name of a user ID ("" if malformed).
func ServerOf(userID string) string {
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return ""
	}
	return string(uid.Domain())
}
