package presence

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/pgstore"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/presence/store"
)

// handler implements the generated PresenceService server. Errors become
// gRPC statuses only here.
type handler struct {
	presencev1.UnimplementedPresenceServiceServer
	svc *Service
}

var _ presencev1.PresenceServiceServer = (*handler)(nil)

func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrForbidden):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrBadRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case pgstore.IsUnavailable(err):
		// The database is down: the caller may retry later.
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// origin defaults to this server (client requests).
func (h *handler) origin(o string) string {
	if o == "" {
		return h.svc.serverName
	}
	return o
}

// requireJoined refuses users not joined to the room.
func (h *handler) requireJoined(ctx context.Context, roomID, userID string) error {
	if roomID == "" || userID == "" {
		return toStatus(ErrBadRequest)
	}
	ok, err := h.svc.isJoined(ctx, roomID, userID)
	if err != nil {
		return toStatus(err)
	}
	if !ok {
		return status.Error(codes.PermissionDenied, "user is not joined to the room")
	}
	return nil
}

func (h *handler) SetTyping(ctx context.Context, req *presencev1.SetTypingRequest) (*presencev1.SetTypingResponse, error) {
	if err := h.requireJoined(ctx, req.GetRoomId(), req.GetUserId()); err != nil {
		return nil, err
	}
	timeout := time.Duration(req.GetTimeoutMs()) * time.Millisecond
	if timeout <= 0 {
		timeout = h.svc.cfg.DefaultTypingTimeout
	}
	timeout = min(timeout, h.svc.cfg.MaxTypingTimeout)
	pos, err := h.svc.setTyping(ctx, req.GetRoomId(), req.GetUserId(), req.GetTyping(), timeout)
	if err != nil {
		return nil, toStatus(err)
	}
	return &presencev1.SetTypingResponse{Position: pos}, nil
}

func (h *handler) SetReceipt(ctx context.Context, req *presencev1.SetReceiptRequest) (*presencev1.SetReceiptResponse, error) {
	if err := h.requireJoined(ctx, req.GetRoomId(), req.GetUserId()); err != nil {
		return nil, err
	}
	pos, err := h.svc.setReceipt(ctx, store.Receipt{
		RoomID: req.GetRoomId(), Type: req.GetReceiptType(), UserID: req.GetUserId(), ThreadID: req.GetThreadId(),
		EventID: req.GetEventId(), TS: req.GetTs(), Origin: h.origin(req.GetOrigin()),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &presencev1.SetReceiptResponse{Position: pos}, nil
}

func (h *handler) SetPresence(ctx context.Context, req *presencev1.SetPresenceRequest) (*presencev1.SetPresenceResponse, error) {
	if req.GetUserId() == "" {
		return nil, toStatus(ErrBadRequest)
	}
	pos, err := h.svc.setPresence(ctx, h.origin(req.GetOrigin()), req.GetUserId(), req.GetPresence(), req.StatusMsg, req.StatusMsg == nil)
	if err != nil {
		return nil, toStatus(err)
	}
	return &presencev1.SetPresenceResponse{Position: pos}, nil
}

// SetRemotePresence records a remote user's presence from an m.presence
// EDU.
func (h *handler) SetRemotePresence(ctx context.Context, req *presencev1.SetRemotePresenceRequest) (*presencev1.SetRemotePresenceResponse, error) {
	pos, err := h.svc.setRemotePresence(ctx, req.GetOrigin(), req.GetUserId(), req.GetPresence(), req.StatusMsg, req.GetLastActiveAgo())
	if err != nil {
		return nil, toStatus(err)
	}
	return &presencev1.SetRemotePresenceResponse{Position: pos}, nil
}

func (h *handler) MarkActive(ctx context.Context, req *presencev1.MarkActiveRequest) (*presencev1.MarkActiveResponse, error) {
	if req.GetUserId() == "" {
		return nil, toStatus(ErrBadRequest)
	}
	if err := h.svc.markActive(ctx, req.GetUserId(), req.GetSetPresence()); err != nil {
		return nil, toStatus(err)
	}
	return &presencev1.MarkActiveResponse{}, nil
}

func (h *handler) GetPresence(ctx context.Context, req *presencev1.GetPresenceRequest) (*presencev1.GetPresenceResponse, error) {
	p, err := h.svc.getPresence(ctx, req.GetRequesterId(), req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &presencev1.GetPresenceResponse{Presence: p}, nil
}

func (h *handler) SyncEphemeral(ctx context.Context, req *presencev1.SyncEphemeralRequest) (*presencev1.SyncEphemeralResponse, error) {
	resp, err := h.svc.syncEphemeral(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}
