// Package clientevent is the client-API's vocabulary for events as clients
// see them (the event format itself is pkg/clientevent, shared with the
// appservice service): rendering stored events, stream tokens, filters,
// ignore lists, and what the room event consumer extracts from an event
// (relations, search text, redacted copies). It holds no state and serves no
// endpoint.
package clientevent

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

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
	var ce pkgce.ClientEvent
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
	pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
	if err != nil {
		return nil, fmt.Errorf("parse event %s: %w", ev.GetEventId(), err)
	}
	ce := pkgce.NewClientEvent(pdu)
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
	var ce pkgce.ClientEvent
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
