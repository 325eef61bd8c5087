package fedsender

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
)

// ErrorDomain is the domain of the ErrorInfo detail a remote's refusal
// carries (reason = its errcode).
const ErrorDomain = "matrix.remote"

// handler implements the generated FederationSenderService server. Errors
// become gRPC statuses only here.
type handler struct {
	fedsenderv1.UnimplementedFederationSenderServiceServer
	svc *Service
}

var _ fedsenderv1.FederationSenderServiceServer = (*handler)(nil)

func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var re *RemoteError
	var grpcErr interface{ GRPCStatus() *status.Status }
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, ErrBadRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrDisabled):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrUnknownRoom):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &re):
		code := codes.FailedPrecondition
		switch {
		case re.HTTPStatus == http.StatusUnauthorized || re.HTTPStatus == http.StatusForbidden:
			code = codes.PermissionDenied
		case re.HTTPStatus == http.StatusNotFound:
			code = codes.NotFound
		case re.HTTPStatus == http.StatusTooManyRequests:
			code = codes.ResourceExhausted
		case re.HTTPStatus >= 500:
			code = codes.Unavailable
		}
		st, derr := status.New(code, err.Error()).WithDetails(&errdetails.ErrorInfo{
			Reason: re.ErrCode, Domain: ErrorDomain,
			Metadata: map[string]string{"server": re.Server, "http_status": strconv.Itoa(re.HTTPStatus), "error": re.Message},
		})
		if derr != nil {
			return status.Error(code, err.Error())
		}
		return st.Err()
	case errors.Is(err, ErrUnreachable), errors.Is(err, ErrBadResponse), errors.Is(err, ErrNoServers):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrNotAccepted):
		return status.Error(codes.Aborted, err.Error())
	case errors.As(err, &grpcErr):
		// A peer's (the room-server's, the key-server's) status.
		return status.Error(grpcErr.GRPCStatus().Code(), err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func (h *handler) PerformJoin(ctx context.Context, req *fedsenderv1.PerformJoinRequest) (*fedsenderv1.PerformJoinResponse, error) {
	resp, err := h.svc.performJoin(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) PerformLeave(ctx context.Context, req *fedsenderv1.PerformLeaveRequest) (*fedsenderv1.PerformLeaveResponse, error) {
	resp, err := h.svc.performLeave(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) PerformInvite(ctx context.Context, req *fedsenderv1.PerformInviteRequest) (*fedsenderv1.PerformInviteResponse, error) {
	resp, err := h.svc.performInvite(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) PerformKnock(ctx context.Context, req *fedsenderv1.PerformKnockRequest) (*fedsenderv1.PerformKnockResponse, error) {
	resp, err := h.svc.performKnock(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryProfile(ctx context.Context, req *fedsenderv1.QueryProfileRequest) (*fedsenderv1.QueryProfileResponse, error) {
	resp, err := h.svc.queryProfile(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryDirectory(ctx context.Context, req *fedsenderv1.QueryDirectoryRequest) (*fedsenderv1.QueryDirectoryResponse, error) {
	resp, err := h.svc.queryDirectory(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryPublicRooms(ctx context.Context, req *fedsenderv1.QueryPublicRoomsRequest) (*fedsenderv1.QueryPublicRoomsResponse, error) {
	resp, err := h.svc.queryPublicRooms(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryHierarchy(ctx context.Context, req *fedsenderv1.QueryHierarchyRequest) (*fedsenderv1.QueryHierarchyResponse, error) {
	resp, err := h.svc.queryHierarchy(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryKeys(ctx context.Context, req *fedsenderv1.QueryKeysRequest) (*fedsenderv1.QueryKeysResponse, error) {
	resp, err := h.svc.queryKeys(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) ClaimKeys(ctx context.Context, req *fedsenderv1.ClaimKeysRequest) (*fedsenderv1.ClaimKeysResponse, error) {
	resp, err := h.svc.claimKeys(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) QueryUserDevices(ctx context.Context, req *fedsenderv1.QueryUserDevicesRequest) (*fedsenderv1.QueryUserDevicesResponse, error) {
	resp, err := h.svc.queryUserDevices(ctx, req)
	return resp, toStatus(err)
}

func (h *handler) Backfill(ctx context.Context, req *fedsenderv1.BackfillRequest) (*fedsenderv1.BackfillResponse, error) {
	resp, err := h.svc.backfill(ctx, req)
	return resp, toStatus(err)
}
