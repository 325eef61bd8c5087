// Package clientevent is the client-server API's event format
// ("ClientEvent") made from a PDU: what the client-API serves and what
// the appservice service pushes to application services (which get
// events "formatted as per the Client-Server API").
package clientevent

import (
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib"
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

// Marshal encodes the event.
func (ce ClientEvent) Marshal() ([]byte, error) { return json.Marshal(ce) }

// IsObject reports whether raw is a JSON object.
func IsObject(raw []byte) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && m != nil
}
