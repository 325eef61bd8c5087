package clientevent

import (
	"encoding/json"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// WithRedactedBecause returns ce with unsigned.redacted_because set to the
// redaction event (in client format, with its room ID).
func WithRedactedBecause(ce pkgce.ClientEvent, roomVersion, roomID string, redactionJSON []byte) (pkgce.ClientEvent, error) {
	red, err := pkgce.ParsePDU(roomVersion, redactionJSON)
	if err != nil {
		return ce, err
	}
	because := pkgce.NewClientEvent(red)
	because.RoomID = roomID
	raw, err := json.Marshal(map[string]any{"redacted_because": because})
	if err != nil {
		return ce, err
	}
	ce.Unsigned = raw
	return ce, nil
}

// RedactedCopy builds the client-format copy of a redacted event.
func RedactedCopy(roomVersion, roomID string, redactedPDU, redactionJSON []byte) (*store.RedactedEvent, error) {
	pdu, err := pkgce.ParsePDU(roomVersion, redactedPDU)
	if err != nil {
		return nil, err
	}
	ce, err := WithRedactedBecause(pkgce.NewClientEvent(pdu), roomVersion, roomID, redactionJSON)
	if err != nil {
		return nil, err
	}
	raw, err := ce.Marshal()
	if err != nil {
		return nil, err
	}
	return &store.RedactedEvent{EventID: pdu.EventID(), JSON: raw}, nil
}

// RedactTxnPrefix keeps /redact's transaction IDs apart from /send's: the
// room-server deduplicates per (device, txn ID), and the spec scopes
// transaction IDs per endpoint.
const RedactTxnPrefix = "redact:"
