package rooms

import (
	"encoding/json"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// eventIDResponse is the body of PUT send and PUT state.
type eventIDResponse struct {
	EventID string `json:"event_id"`
}

// send is PUT /rooms/{roomId}/send/{eventType}/{txnId}. The room-server
// deduplicates by (device, txnId), so a retried request returns the first
// event's ID.
func (s *Rooms) send(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
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
	ts, err := httpapi.AppserviceTS(r, dev)
	if err != nil {
		return nil, err
	}
	tmpl := &roomserverv1.EventTemplate{Type: evType, Content: content, OriginServerTs: ts}
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
func (s *Rooms) putState(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
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
	ts, err := httpapi.AppserviceTS(r, dev)
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
		Event:  &roomserverv1.EventTemplate{Type: evType, StateKey: &stateKey, Content: content, OriginServerTs: ts},
	})
	if err != nil {
		return nil, err
	}
	return eventIDResponse{EventID: eventID}, nil
}

// getState is GET /rooms/{roomId}/state/{eventType}/{stateKey}.
func (s *Rooms) getState(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
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
	acc, err := s.history.AccessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	resp, err := s.rooms.QueryState(r.Context(), &roomserverv1.QueryStateRequest{
		RoomId:  roomID,
		EventId: acc.AtEventID,
		After:   acc.AtEventID != "",
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
func (s *Rooms) getAllState(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	acc, err := s.history.AccessRoom(r, dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	return s.history.RoomState(r.Context(), roomID, acc)
}
