package clientapi

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// userHandler implements the generated UserService server: what other
// services ask about local users. Errors become gRPC statuses only here.
type userHandler struct {
	clientapiv1.UnimplementedUserServiceServer
	svc *Service
}

var _ clientapiv1.UserServiceServer = (*userHandler)(nil)

func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// Authenticate resolves an access token: UNAUTHENTICATED when the token
// is unknown, INVALID_ARGUMENT when it is empty; an expired token is
// answered (expired=true), as the caller owes the client a soft logout.
func (h *userHandler) Authenticate(ctx context.Context, req *clientapiv1.AuthenticateRequest) (*clientapiv1.AuthenticateResponse, error) {
	if req.GetAccessToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "access_token is empty")
	}
	dev, expired, err := h.svc.lookupAccessToken(ctx, req.GetAccessToken())
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Error(codes.Unauthenticated, "unknown access token")
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &clientapiv1.AuthenticateResponse{
		UserId:    dev.UserID,
		DeviceId:  dev.DeviceID,
		Guest:     dev.IsGuest,
		Admin:     dev.IsAdmin,
		Locked:    dev.Locked,
		Suspended: dev.Suspended,
		Expired:   expired,
	}, nil
}

// QueryProfile returns a local user's display name and avatar URL:
// NOT_FOUND for an unknown or deactivated user, INVALID_ARGUMENT for a
// user ID that is not this server's.
func (h *userHandler) QueryProfile(ctx context.Context, req *clientapiv1.QueryProfileRequest) (*clientapiv1.QueryProfileResponse, error) {
	uid, err := spec.NewUserID(req.GetUserId(), true)
	if err != nil || string(uid.Domain()) != h.svc.serverName {
		return nil, status.Error(codes.InvalidArgument, "not a user ID of this server")
	}
	acct, err := h.svc.store.Account(ctx, uid.Local())
	if err == nil && acct.Deactivated {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, toStatus(err)
	}
	out := &clientapiv1.QueryProfileResponse{}
	if acct.DisplayName != "" {
		out.Displayname = &acct.DisplayName
	}
	if acct.AvatarURL != "" {
		out.AvatarUrl = &acct.AvatarURL
	}
	return out, nil
}
