package appservice

import (
	"context"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// handler implements the generated AppserviceService server.
type handler struct {
	appservicev1.UnimplementedAppserviceServiceServer
	svc *Service
}

var _ appservicev1.AppserviceServiceServer = (*handler)(nil)

func (h *handler) QueryUser(ctx context.Context, req *appservicev1.QueryUserRequest) (*appservicev1.QueryResponse, error) {
	if !strings.HasPrefix(req.GetUserId(), "@") || !strings.Contains(req.GetUserId(), ":") {
		return nil, status.Errorf(codes.InvalidArgument, "bad user ID %q", req.GetUserId())
	}
	return h.svc.QueryUser(ctx, req.GetUserId()), nil
}

func (h *handler) QueryAlias(ctx context.Context, req *appservicev1.QueryAliasRequest) (*appservicev1.QueryResponse, error) {
	if !strings.HasPrefix(req.GetAlias(), "#") || !strings.Contains(req.GetAlias(), ":") {
		return nil, status.Errorf(codes.InvalidArgument, "bad room alias %q", req.GetAlias())
	}
	return h.svc.QueryAlias(ctx, req.GetAlias()), nil
}

func (h *handler) ThirdPartyProtocols(ctx context.Context, _ *appservicev1.ThirdPartyProtocolsRequest) (*appservicev1.ThirdPartyProtocolsResponse, error) {
	return &appservicev1.ThirdPartyProtocolsResponse{Protocols: h.svc.protocols(ctx)}, nil
}

func (h *handler) ThirdPartyProtocol(ctx context.Context, req *appservicev1.ThirdPartyProtocolRequest) (*appservicev1.ThirdPartyProtocolResponse, error) {
	p := h.svc.protocol(ctx, req.GetProtocol())
	if p == nil {
		return &appservicev1.ThirdPartyProtocolResponse{Result: appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND}, nil
	}
	return &appservicev1.ThirdPartyProtocolResponse{Result: appservicev1.QueryResult_QUERY_RESULT_FOUND, Protocol: p}, nil
}

func (h *handler) ThirdPartyLocations(ctx context.Context, req *appservicev1.ThirdPartyLookupRequest) (*appservicev1.ThirdPartyLookupResponse, error) {
	return h.svc.lookup(ctx, "location", req.GetProtocol(), req.GetQuery()), nil
}

func (h *handler) ThirdPartyUsers(ctx context.Context, req *appservicev1.ThirdPartyLookupRequest) (*appservicev1.ThirdPartyLookupResponse, error) {
	return h.svc.lookup(ctx, "user", req.GetProtocol(), req.GetQuery()), nil
}

func (h *handler) Ping(ctx context.Context, req *appservicev1.PingRequest) (*appservicev1.PingResponse, error) {
	r := h.svc.regs.ByID(req.GetAppserviceId())
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "no appservice %q", req.GetAppserviceId())
	}
	return h.svc.ping(ctx, r, req.GetTransactionId()), nil
}

func (h *handler) ListAppservices(ctx context.Context, _ *appservicev1.ListAppservicesRequest) (*appservicev1.ListAppservicesResponse, error) {
	list, err := h.svc.list(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "appservice states: %v", err)
	}
	return &appservicev1.ListAppservicesResponse{Appservices: list}, nil
}
