// Package ephemeral serves typing notifications, read receipts, read
// markers and presence. The data belongs to the presence service; these
// handlers check the request (only for yourself) and call it over gRPC.
// What /sync shows of it is the sync package's (internal/syncapi).
package ephemeral

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// Service serves the ephemeral endpoints.
type Service struct {
	serverName string
	// presence may be nil: the endpoints then answer 503.
	presence presencev1.PresenceServiceClient
	// rooms answers which room an event belongs to (read markers).
	rooms roomserverv1.RoomServiceClient
	log   *zap.Logger
}

// New returns the ephemeral endpoints of serverName.
func New(serverName string, presence presencev1.PresenceServiceClient, rooms roomserverv1.RoomServiceClient, log *zap.Logger) *Service {
	return &Service{serverName: serverName, presence: presence, rooms: rooms, log: log}
}

// fromGRPC converts a peer service's error into a Matrix error
// (httpapi.FromGRPC).
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}

// Routes are the ephemeral endpoints.
func (s *Service) Routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodPut, Path: "/rooms/{roomId}/typing/{userId}", Auth: true, Serve: s.putTyping},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/receipt/{receiptType}/{eventId}", Auth: true, Serve: s.postReceipt},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/read_markers", Auth: true, Serve: s.postReadMarkers},
		{Method: http.MethodGet, Path: "/presence/{userId}/status", Auth: true, Serve: s.getPresence},
		{Method: http.MethodPut, Path: "/presence/{userId}/status", Auth: true, Serve: s.putPresence},
	}
}

// presenceErrors: the presence service refuses users who are not joined
// (typing, receipts) or share no room (presence) with PERMISSION_DENIED.
var presenceErrors = httpapi.GRPCOverrides{
	codes.InvalidArgument: matrixhttp.InvalidParam,
}

// presenceClient returns the presence service, or M_UNRECOGNIZED-style
// unavailability when the process was built without one.
func (s *Service) presenceClient() (presencev1.PresenceServiceClient, error) {
	if s.presence == nil {
		return nil, httpapi.UnknownError(http.StatusServiceUnavailable, "Presence service not configured")
	}
	return s.presence, nil
}

// ownUserParam reads {userId} and requires it to be the requester.
func ownUserParam(r *http.Request, dev *httpapi.Device, what string) error {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return err
	}
	if userID != dev.UserID {
		return matrixhttp.Forbidden("Cannot set " + what + " for another user")
	}
	return nil
}

// putTyping is PUT /rooms/{roomId}/typing/{userId}.
func (s *Service) putTyping(r *http.Request, dev *httpapi.Device) (any, error) {
	ps, err := s.presenceClient()
	if err != nil {
		return nil, err
	}
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	if err := ownUserParam(r, dev, "typing"); err != nil {
		return nil, err
	}
	var req struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.Typing == nil {
		return nil, matrixhttp.BadJSON("Missing typing")
	}
	if req.Timeout != nil && *req.Timeout < 0 {
		return nil, matrixhttp.BadJSON("timeout must not be negative")
	}
	in := &presencev1.SetTypingRequest{Origin: s.serverName, RoomId: roomID, UserId: dev.UserID, Typing: *req.Typing}
	if req.Timeout != nil {
		in.TimeoutMs = *req.Timeout
	}
	if _, err := ps.SetTyping(r.Context(), in); err != nil {
		return nil, s.fromGRPC(r.Context(), "SetTyping", err, presenceErrors)
	}
	return struct{}{}, nil
}

// validThreadID: "main" or an event ID.
func validThreadID(t string) bool { return t == "main" || strings.HasPrefix(t, "$") }

// postReceipt is POST /rooms/{roomId}/receipt/{receiptType}/{eventId}.
func (s *Service) postReceipt(r *http.Request, dev *httpapi.Device) (any, error) {
	ps, err := s.presenceClient()
	if err != nil {
		return nil, err
	}
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	receiptType, err := httpapi.PathParam(r, "receiptType")
	if err != nil {
		return nil, err
	}
	eventID, err := httpapi.PathParam(r, "eventId")
	if err != nil {
		return nil, err
	}
	switch receiptType {
	case "m.read", "m.read.private", "m.fully_read":
	default:
		return nil, matrixhttp.InvalidParam("Unsupported receipt type")
	}
	if !strings.HasPrefix(eventID, "$") {
		return nil, matrixhttp.InvalidParam("Invalid event ID")
	}
	var req struct {
		ThreadID *string `json:"thread_id"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	in := &presencev1.SetReceiptRequest{Origin: s.serverName, RoomId: roomID, UserId: dev.UserID, ReceiptType: receiptType, EventId: eventID}
	if req.ThreadID != nil {
		if receiptType == "m.fully_read" || !validThreadID(*req.ThreadID) {
			return nil, matrixhttp.InvalidParam("Invalid thread_id")
		}
		in.ThreadId = *req.ThreadID
	}
	if _, err := ps.SetReceipt(r.Context(), in); err != nil {
		return nil, s.fromGRPC(r.Context(), "SetReceipt", err, presenceErrors)
	}
	return struct{}{}, nil
}

// postReadMarkers is POST /rooms/{roomId}/read_markers: m.fully_read
// moves the read marker, m.read and m.read.private are receipts.
func (s *Service) postReadMarkers(r *http.Request, dev *httpapi.Device) (any, error) {
	ps, err := s.presenceClient()
	if err != nil {
		return nil, err
	}
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	// Other keys (extensions) are ignored.
	var req map[string]json.RawMessage
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	markers := map[string]string{}
	for _, typ := range []string{"m.fully_read", "m.read", "m.read.private"} {
		raw, ok := req[typ]
		if !ok {
			continue
		}
		var eventID string
		if json.Unmarshal(raw, &eventID) != nil || !strings.HasPrefix(eventID, "$") {
			return nil, matrixhttp.InvalidParam("Invalid event ID for " + typ)
		}
		markers[typ] = eventID
	}
	// "The event MUST belong to the room" (read_markers.yaml, m.fully_read).
	if eventID, ok := markers["m.fully_read"]; ok {
		if err := s.eventInRoom(r.Context(), roomID, eventID); err != nil {
			return nil, err
		}
	}
	for _, typ := range []string{"m.fully_read", "m.read", "m.read.private"} {
		eventID, ok := markers[typ]
		if !ok {
			continue
		}
		_, err := ps.SetReceipt(r.Context(), &presencev1.SetReceiptRequest{
			Origin: s.serverName, RoomId: roomID, UserId: dev.UserID, ReceiptType: typ, EventId: eventID,
		})
		if err != nil {
			return nil, s.fromGRPC(r.Context(), "SetReceipt", err, presenceErrors)
		}
	}
	return struct{}{}, nil
}

// eventInRoom answers 404 M_NOT_FOUND unless the room-server has eventID
// in roomID.
func (s *Service) eventInRoom(ctx context.Context, roomID, eventID string) error {
	resp, err := s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: []string{eventID}})
	if err != nil {
		return s.fromGRPC(ctx, "QueryEvents", err, nil)
	}
	if len(resp.GetEvents()) != 1 || resp.GetEvents()[0].GetRoomId() != roomID {
		return matrixhttp.NotFound("Event " + eventID + " is not in this room")
	}
	return nil
}

// presenceBody is the body of GET and PUT /presence/{userId}/status.
type presenceBody struct {
	Presence        string  `json:"presence"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	LastActiveAgo   *int64  `json:"last_active_ago,omitempty"`
	CurrentlyActive *bool   `json:"currently_active,omitempty"`
}

// getPresence is GET /presence/{userId}/status.
func (s *Service) getPresence(r *http.Request, dev *httpapi.Device) (any, error) {
	ps, err := s.presenceClient()
	if err != nil {
		return nil, err
	}
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	resp, err := ps.GetPresence(r.Context(), &presencev1.GetPresenceRequest{RequesterId: dev.UserID, UserId: userID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "GetPresence", err, httpapi.GRPCOverrides{
			codes.PermissionDenied: func(string) *matrixhttp.Error {
				return matrixhttp.Forbidden("You are not allowed to see their presence")
			},
		})
	}
	p := resp.GetPresence()
	body := presenceBody{Presence: p.GetPresence(), StatusMsg: p.StatusMsg, LastActiveAgo: p.LastActiveAgo}
	if p.LastActiveAgo != nil {
		active := p.GetCurrentlyActive()
		body.CurrentlyActive = &active
	}
	return body, nil
}

// putPresence is PUT /presence/{userId}/status.
func (s *Service) putPresence(r *http.Request, dev *httpapi.Device) (any, error) {
	ps, err := s.presenceClient()
	if err != nil {
		return nil, err
	}
	if err := ownUserParam(r, dev, "presence"); err != nil {
		return nil, err
	}
	var req struct {
		Presence  *string `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.Presence == nil {
		return nil, matrixhttp.BadJSON("Missing presence")
	}
	switch *req.Presence {
	case "online", "unavailable", "offline":
	default:
		return nil, matrixhttp.InvalidParam("presence must be online, unavailable or offline")
	}
	_, err = ps.SetPresence(r.Context(), &presencev1.SetPresenceRequest{
		Origin: s.serverName, UserId: dev.UserID, Presence: *req.Presence, StatusMsg: req.StatusMsg,
	})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "SetPresence", err, presenceErrors)
	}
	return struct{}{}, nil
}
