package rooms

// Redactions, client side. The room-server decides whether a redaction
// applies and replaces the target by its redacted form (gomatrixserverlib's
// algorithm for the room version); its OutputRoomEvent for the redaction
// carries that redacted form, and the consumer overwrites the client-API's
// copies (sync_events and current_state) in the same transaction that
// stores the redaction. An event whose redaction reached the room-server
// first is published already redacted, with the redaction attached. Either
// way the stored client event carries unsigned.redacted_because.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// redact is PUT /rooms/{roomId}/redact/{eventId}/{txnId}. The room-server
// puts the target where the room version wants it (top-level "redacts"
// before v11, content.redacts from v11 on) and refuses redacting another
// user's event without the redact power level (M_FORBIDDEN).
func (s *Rooms) redact(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	eventID, err := httpapi.PathParam(r, "eventId")
	if err != nil {
		return nil, err
	}
	txnID, err := httpapi.PathParam(r, "txnId")
	if err != nil {
		return nil, err
	}
	if eventID == "" || txnID == "" {
		return nil, matrixhttp.InvalidParam("Event ID and transaction ID must not be empty")
	}
	if err := s.suspendedRedaction(r, dev, roomID, eventID); err != nil {
		return nil, err
	}
	body, err := httpapi.ReadObject(r, httpapi.BodyOptional)
	if err != nil {
		return nil, err
	}
	var req struct {
		Reason *string `json:"reason"`
	}
	if len(body) > 0 {
		if err := httpapi.DecodeObject(body, &req); err != nil {
			return nil, err
		}
	}
	content := map[string]any{}
	if req.Reason != nil {
		content["reason"] = *req.Reason
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, fmt.Errorf("encode redaction content: %w", err)
	}
	redactionID, err := s.sendOwnEvent(r.Context(), &roomserverv1.SendEventRequest{
		RoomId:        roomID,
		Sender:        dev.UserID,
		Event:         &roomserverv1.EventTemplate{Type: "m.room.redaction", Content: raw, Redacts: eventID},
		TransactionId: &roomserverv1.TransactionID{DeviceId: dev.DeviceID, TxnId: clientevent.RedactTxnPrefix + txnID},
	})
	if err != nil {
		return nil, err
	}
	return eventIDResponse{EventID: redactionID}, nil
}

// suspendedRedaction refuses a suspended user's redaction of another
// user's event (users' moderation.go); their own events they may redact. An
// unknown target is left to the room-server.
func (s *Rooms) suspendedRedaction(r *http.Request, dev *httpapi.Device, roomID, target string) error {
	if !dev.Suspended {
		return nil
	}
	e, err := s.store.Reader().EventByID(r.Context(), roomID, target)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if e.Sender != dev.UserID {
		return httpapi.ErrSuspended()
	}
	return nil
}
