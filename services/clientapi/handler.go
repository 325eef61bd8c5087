package clientapi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
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
	case errors.Is(err, users.ErrNotLocal):
		return status.Error(codes.InvalidArgument, err.Error())
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
	dev, expired, err := h.svc.users.Accounts.LookupAccessToken(ctx, req.GetAccessToken())
	if errors.Is(err, httpapi.ErrUnknownToken) {
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
	name, avatar, err := h.svc.users.Queries.Profile(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &clientapiv1.QueryProfileResponse{}
	if name != "" {
		out.Displayname = &name
	}
	if avatar != "" {
		out.AvatarUrl = &avatar
	}
	return out, nil
}

// QueryAccount says whether a local account exists and what it is.
func (h *userHandler) QueryAccount(ctx context.Context, req *clientapiv1.QueryAccountRequest) (*clientapiv1.QueryAccountResponse, error) {
	info, err := h.svc.users.Queries.Account(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &clientapiv1.QueryAccountResponse{
		Exists: info.Exists, Deactivated: info.Deactivated, Guest: info.Guest, Admin: info.Admin,
		Locked: info.Locked, Suspended: info.Suspended,
	}, nil
}

// ListDevices lists a local user's devices.
func (h *userHandler) ListDevices(ctx context.Context, req *clientapiv1.ListDevicesRequest) (*clientapiv1.ListDevicesResponse, error) {
	devices, err := h.svc.users.Queries.Devices(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &clientapiv1.ListDevicesResponse{Devices: make([]*clientapiv1.Device, 0, len(devices))}
	for _, d := range devices {
		out.Devices = append(out.Devices, &clientapiv1.Device{
			DeviceId: d.DeviceID, DisplayName: d.DisplayName, LastSeenTs: d.LastSeenTS, LastSeenIp: d.LastSeenIP,
		})
	}
	return out, nil
}

// GetAccountData returns one piece of a local user's account data.
func (h *userHandler) GetAccountData(ctx context.Context, req *clientapiv1.GetAccountDataRequest) (*clientapiv1.GetAccountDataResponse, error) {
	if req.GetType() == "" {
		return nil, status.Error(codes.InvalidArgument, "type is empty")
	}
	content, err := h.svc.users.Queries.AccountData(ctx, req.GetUserId(), req.GetRoomId(), req.GetType())
	if err != nil {
		return nil, toStatus(err)
	}
	return &clientapiv1.GetAccountDataResponse{Content: content}, nil
}

// GetPushRules returns a local user's effective push rules.
func (h *userHandler) GetPushRules(ctx context.Context, req *clientapiv1.GetPushRulesRequest) (*clientapiv1.GetPushRulesResponse, error) {
	if err := h.svc.users.Queries.CheckLocal(req.GetUserId()); err != nil {
		return nil, toStatus(err)
	}
	content, err := h.svc.push.RulesContent(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &clientapiv1.GetPushRulesResponse{Content: content}, nil
}

// ListPushers lists a local user's pushers.
func (h *userHandler) ListPushers(ctx context.Context, req *clientapiv1.ListPushersRequest) (*clientapiv1.ListPushersResponse, error) {
	if err := h.svc.users.Queries.CheckLocal(req.GetUserId()); err != nil {
		return nil, toStatus(err)
	}
	pushers, err := h.svc.push.Pushers(ctx, req.GetUserId())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &clientapiv1.ListPushersResponse{Pushers: make([]*clientapiv1.Pusher, 0, len(pushers))}
	for _, p := range pushers {
		out.Pushers = append(out.Pushers, &clientapiv1.Pusher{
			Pushkey: p.PushKey, Kind: p.Kind, AppId: p.AppID, AppDisplayName: p.AppDisplayName,
			DeviceDisplayName: p.DeviceDisplayName, ProfileTag: p.ProfileTag, Lang: p.Lang, Data: p.Data, DeviceId: p.DeviceID,
		})
	}
	return out, nil
}

// ValidateOpenIDToken resolves an OpenID token to its user: NOT_FOUND for
// an unknown or expired token, INVALID_ARGUMENT for an empty one.
func (h *userHandler) ValidateOpenIDToken(ctx context.Context, req *clientapiv1.ValidateOpenIDTokenRequest) (*clientapiv1.ValidateOpenIDTokenResponse, error) {
	if req.GetToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "token is empty")
	}
	userID, err := h.svc.users.Queries.OpenIDTokenUser(ctx, req.GetToken())
	if err != nil {
		return nil, toStatus(err)
	}
	return &clientapiv1.ValidateOpenIDTokenResponse{UserId: userID}, nil
}
