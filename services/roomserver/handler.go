package roomserver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/pgstore"
	"github.com/myelin-chat/myelin/pkg/rpc"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/signing"
)

// handler implements the generated RoomService server. It is the only
// place errors become gRPC statuses.
type handler struct {
	roomserverv1.UnimplementedRoomServiceServer
	svc *Service
}

var _ roomserverv1.RoomServiceServer = (*handler)(nil)

// toStatus maps sentinel errors to gRPC codes; anything else is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err // a gRPC status already (the directory's), not wrapped
	}
	var code codes.Code
	switch {
	case errors.Is(err, ErrRoomNotFound), errors.Is(err, ErrEventNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrForbidden):
		code = codes.PermissionDenied
	case errors.Is(err, ErrBadRequest), errors.Is(err, signing.ErrInvalidEvent), errors.Is(err, ErrUnsupportedRoomVersion):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNoState):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrEventTooLarge), errors.Is(err, signing.ErrTooLarge):
		code = codes.OutOfRange
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, errKeyServer), errors.Is(err, ErrUndeliverable), pgstore.IsUnavailable(err):
		// The key-server, NATS or the database is down: the caller may
		// retry later.
		code = codes.Unavailable
	default:
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

func (h *handler) CreateRoom(ctx context.Context, req *roomserverv1.CreateRoomRequest) (*roomserverv1.CreateRoomResponse, error) {
	resp, err := h.svc.createRoom(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) SendEvent(ctx context.Context, req *roomserverv1.SendEventRequest) (*roomserverv1.SendEventResponse, error) {
	if req.GetEvent() == nil {
		return nil, status.Error(codes.InvalidArgument, "event is required")
	}
	resp, err := h.svc.sendEvent(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) InputEvents(ctx context.Context, req *roomserverv1.InputEventsRequest) (*roomserverv1.InputEventsResponse, error) {
	// signatures_checked is a caller's word that it verified the
	// signatures: taken only from the callers allowed to give it.
	if !rpc.CallerOf(ctx).OneOf(h.svc.sigCheckedCallers) {
		for _, ie := range req.GetEvents() {
			ie.SignaturesChecked = false
		}
	}
	results, err := h.svc.inputEvents(ctx, req.GetEvents())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &roomserverv1.InputEventsResponse{Results: make([]*roomserverv1.InputEventResult, 0, len(results))}
	for _, r := range results {
		resp.Results = append(resp.Results, r.proto())
	}
	return resp, nil
}

func (h *handler) QueryEvents(ctx context.Context, req *roomserverv1.QueryEventsRequest) (*roomserverv1.QueryEventsResponse, error) {
	events, err := h.svc.queryEvents(ctx, req.GetEventIds())
	if err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.QueryEventsResponse{Events: events}, nil
}

func (h *handler) QueryState(ctx context.Context, req *roomserverv1.QueryStateRequest) (*roomserverv1.QueryStateResponse, error) {
	resp, err := h.svc.queryState(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryStateBatch(ctx context.Context, req *roomserverv1.QueryStateBatchRequest) (*roomserverv1.QueryStateBatchResponse, error) {
	resp, err := h.svc.queryStateBatch(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryMembership(ctx context.Context, req *roomserverv1.QueryMembershipRequest) (*roomserverv1.QueryMembershipResponse, error) {
	resp, err := h.svc.queryMembership(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryRoomInfo(ctx context.Context, req *roomserverv1.QueryRoomInfoRequest) (*roomserverv1.QueryRoomInfoResponse, error) {
	resp, err := h.svc.queryRoomInfo(ctx, req.GetRoomId())
	return resp, toStatus(err)
}

func (h *handler) SetRoomAlias(ctx context.Context, req *roomserverv1.SetRoomAliasRequest) (*roomserverv1.SetRoomAliasResponse, error) {
	created, err := h.svc.directory.SetRoomAlias(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.SetRoomAliasResponse{Created: created}, nil
}

func (h *handler) GetRoomAlias(ctx context.Context, req *roomserverv1.GetRoomAliasRequest) (*roomserverv1.GetRoomAliasResponse, error) {
	resp, err := h.svc.directory.GetRoomAlias(ctx, req.GetAlias())
	return resp, toStatus(err)
}

func (h *handler) RemoveRoomAlias(ctx context.Context, req *roomserverv1.RemoveRoomAliasRequest) (*roomserverv1.RemoveRoomAliasResponse, error) {
	removed, err := h.svc.directory.RemoveRoomAlias(ctx, req.GetAlias())
	if err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.RemoveRoomAliasResponse{Removed: removed}, nil
}

func (h *handler) ListRoomAliases(ctx context.Context, req *roomserverv1.ListRoomAliasesRequest) (*roomserverv1.ListRoomAliasesResponse, error) {
	resp, err := h.svc.directory.ListRoomAliases(ctx, req.GetRoomId())
	return resp, toStatus(err)
}

func (h *handler) SetRoomVisibility(ctx context.Context, req *roomserverv1.SetRoomVisibilityRequest) (*roomserverv1.SetRoomVisibilityResponse, error) {
	if err := h.svc.directory.SetRoomVisibility(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.SetRoomVisibilityResponse{}, nil
}

func (h *handler) GetRoomVisibility(ctx context.Context, req *roomserverv1.GetRoomVisibilityRequest) (*roomserverv1.GetRoomVisibilityResponse, error) {
	resp, err := h.svc.directory.GetRoomVisibility(ctx, req.GetRoomId())
	return resp, toStatus(err)
}

func (h *handler) ListPublicRooms(ctx context.Context, req *roomserverv1.ListPublicRoomsRequest) (*roomserverv1.ListPublicRoomsResponse, error) {
	resp, err := h.svc.directory.ListPublicRooms(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryAuthChain(ctx context.Context, req *roomserverv1.QueryAuthChainRequest) (*roomserverv1.QueryAuthChainResponse, error) {
	resp, err := fedQuery{h.svc}.queryAuthChain(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryStateAndAuthChain(ctx context.Context, req *roomserverv1.QueryStateAndAuthChainRequest) (*roomserverv1.QueryStateAndAuthChainResponse, error) {
	resp, err := fedQuery{h.svc}.queryStateAndAuthChain(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) GetMissingEvents(ctx context.Context, req *roomserverv1.GetMissingEventsRequest) (*roomserverv1.GetMissingEventsResponse, error) {
	events, err := fedQuery{h.svc}.getMissingEvents(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.GetMissingEventsResponse{Events: events}, nil
}

func (h *handler) Backfill(ctx context.Context, req *roomserverv1.BackfillRequest) (*roomserverv1.BackfillResponse, error) {
	events, err := fedQuery{h.svc}.backfill(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.BackfillResponse{Events: events}, nil
}

func (h *handler) FilterEventsForServer(ctx context.Context, req *roomserverv1.FilterEventsForServerRequest) (*roomserverv1.FilterEventsForServerResponse, error) {
	events, err := fedQuery{h.svc}.filterEventsForServer(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &roomserverv1.FilterEventsForServerResponse{Events: events}, nil
}

func (h *handler) QueryRoomServers(ctx context.Context, req *roomserverv1.QueryRoomServersRequest) (*roomserverv1.QueryRoomServersResponse, error) {
	resp, err := fedQuery{h.svc}.queryRoomServers(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) MakeMembershipEvent(ctx context.Context, req *roomserverv1.MakeMembershipEventRequest) (*roomserverv1.MakeMembershipEventResponse, error) {
	resp, err := residentJoins{h.svc}.makeMembershipEvent(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) SignJoin(ctx context.Context, req *roomserverv1.SignJoinRequest) (*roomserverv1.SignJoinResponse, error) {
	resp, err := residentJoins{h.svc}.signJoin(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryEventByTimestamp(ctx context.Context, req *roomserverv1.QueryEventByTimestampRequest) (*roomserverv1.QueryEventByTimestampResponse, error) {
	resp, err := fedQuery{h.svc}.queryEventByTimestamp(ctx, req)
	return resp, toStatus(err)
}
