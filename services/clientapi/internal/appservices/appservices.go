// Package appservices is the client-API's application services domain:
// the endpoints only appservices call (ping, their network directories),
// the third-party lookups they answer (/thirdparty/*), and the user and
// alias queries the users and rooms domains make when a client asks for
// an unknown user or alias in an appservice's namespace. The calls to
// appservices go through the appservice service (AppserviceService over
// gRPC), which holds their URLs and hs_tokens.
package appservices

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// Service is the application services domain.
type Service struct {
	set *appservice.Set
	// client is the appservice service; nil when the process has none
	// (queries then find nothing, the endpoints answer 503).
	client appservicev1.AppserviceServiceClient
	rooms  roomserverv1.RoomServiceClient
	log    *zap.Logger
}

// New returns the domain.
func New(set *appservice.Set, client appservicev1.AppserviceServiceClient, rooms roomserverv1.RoomServiceClient, log *zap.Logger) *Service {
	return &Service{set: set, client: client, rooms: rooms, log: log}
}

// Routes are the appservice and third-party endpoints.
func (s *Service) Routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodPost, Path: "/_matrix/client/v1/appservice/{appserviceId}/ping", Abs: true, Auth: true, Serve: s.ping},
		{Method: http.MethodPut, Path: "/directory/list/appservice/{networkId}/{roomId}", Auth: true, Serve: s.putNetworkVisibility},
		{Method: http.MethodGet, Path: "/thirdparty/protocols", Auth: true, Serve: s.protocols},
		{Method: http.MethodGet, Path: "/thirdparty/protocol/{protocol}", Auth: true, Serve: s.protocol},
		{Method: http.MethodGet, Path: "/thirdparty/location/{protocol}", Auth: true, Serve: s.lookup(lookupLocation, true)},
		{Method: http.MethodGet, Path: "/thirdparty/user/{protocol}", Auth: true, Serve: s.lookup(lookupUser, true)},
		{Method: http.MethodGet, Path: "/thirdparty/location", Auth: true, Serve: s.lookup(lookupLocation, false)},
		{Method: http.MethodGet, Path: "/thirdparty/user", Auth: true, Serve: s.lookup(lookupUser, false)},
	}
}

// queryFailed is a user or alias query the appservice did not answer
// (502) or did not answer in time (504).
func queryFailed(resp *appservicev1.QueryResponse, what string) error {
	if resp.GetResult() == appservicev1.QueryResult_QUERY_RESULT_TIMEOUT {
		return matrixhttp.Errorf(http.StatusGatewayTimeout, "M_UNKNOWN",
			"The application service %s did not answer in time about %s", resp.GetAppserviceId(), what)
	}
	return matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN",
		"The application service %s could not be asked about %s", resp.GetAppserviceId(), what)
}

// QueryUser asks the appservice whose users namespace holds an unknown
// user about it. asked says the appservice answered that it exists (it
// should have registered it: look again); no appservice, or one that does
// not know the user, is asked == false; one that fails or does not answer
// in time is a 502 or 504 error for the client.
func (s *Service) QueryUser(ctx context.Context, userID string) (asked bool, err error) {
	if s.client == nil || s.set.UserQueryTarget(userID) == nil {
		return false, nil
	}
	resp, err := s.client.QueryUser(ctx, &appservicev1.QueryUserRequest{UserId: userID})
	if err != nil {
		return false, httpapi.FromGRPC(ctx, s.log, "QueryUser", err, nil)
	}
	return s.queryOutcome(resp, userID)
}

// QueryAlias is QueryUser for an unknown room alias: the appservice may
// create the room and the alias before it answers.
func (s *Service) QueryAlias(ctx context.Context, alias string) (asked bool, err error) {
	if s.client == nil || s.set.AliasQueryTarget(alias) == nil {
		return false, nil
	}
	resp, err := s.client.QueryAlias(ctx, &appservicev1.QueryAliasRequest{Alias: alias})
	if err != nil {
		return false, httpapi.FromGRPC(ctx, s.log, "QueryAlias", err, nil)
	}
	return s.queryOutcome(resp, alias)
}

func (s *Service) queryOutcome(resp *appservicev1.QueryResponse, what string) (bool, error) {
	switch resp.GetResult() {
	case appservicev1.QueryResult_QUERY_RESULT_FOUND:
		return true, nil
	case appservicev1.QueryResult_QUERY_RESULT_ERROR, appservicev1.QueryResult_QUERY_RESULT_TIMEOUT:
		s.log.Info("application service query failed", zap.String("appservice", resp.GetAppserviceId()),
			zap.String("about", what), zap.String("error", resp.GetError()))
		return false, queryFailed(resp, what)
	default:
		return false, nil
	}
}

// serviceClient is the appservice service, or 503 when there is none.
func (s *Service) serviceClient() (appservicev1.AppserviceServiceClient, error) {
	if s.client == nil {
		return nil, httpapi.UnknownError(http.StatusServiceUnavailable, "Application service support is not configured")
	}
	return s.client, nil
}

// ping is POST /_matrix/client/v1/appservice/{appserviceId}/ping: only
// the appservice itself (its as_token) may ask the homeserver to ping it.
func (s *Service) ping(r *http.Request, dev *httpapi.Device) (any, error) {
	asID, err := httpapi.PathParam(r, "appserviceId")
	if err != nil {
		return nil, err
	}
	if dev.Appservice == nil || dev.Appservice.ID != asID {
		return nil, matrixhttp.Forbidden("Provided access token is not the appservice's as_token")
	}
	var req struct {
		TransactionID string `json:"transaction_id"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	client, err := s.serviceClient()
	if err != nil {
		return nil, err
	}
	resp, err := client.Ping(r.Context(), &appservicev1.PingRequest{AppserviceId: asID, TransactionId: req.TransactionID})
	if err != nil {
		return nil, httpapi.FromGRPC(r.Context(), s.log, "Ping", err, nil)
	}
	switch code := resp.GetErrcode(); code {
	case "":
		return map[string]int64{"duration_ms": resp.GetDurationMs()}, nil
	case "M_URL_NOT_SET":
		return nil, matrixhttp.Errorf(http.StatusBadRequest, code, "%s", resp.GetError())
	case "M_CONNECTION_TIMEOUT":
		return nil, matrixhttp.Errorf(http.StatusGatewayTimeout, code, "%s", resp.GetError())
	case "M_BAD_STATUS":
		e := matrixhttp.Errorf(http.StatusBadGateway, code, "%s", resp.GetError())
		e.Extra = map[string]any{"status": resp.GetStatus(), "body": resp.GetBody()}
		return nil, e
	default:
		return nil, matrixhttp.Errorf(http.StatusBadGateway, code, "%s", resp.GetError())
	}
}

// InstanceID is a protocol instance's instance_id as the homeserver gives
// it to clients (GET /thirdparty/protocols, the appservice service adds
// it): "<appservice ID>|<network ID>", as Synapse does.
func InstanceID(appserviceID, networkID string) string { return appserviceID + "|" + networkID }

// ParseInstanceID splits a third_party_instance_id (InstanceID).
func ParseInstanceID(instanceID string) (appserviceID, networkID string, ok bool) {
	appserviceID, networkID, ok = strings.Cut(instanceID, "|")
	return appserviceID, networkID, ok && appserviceID != "" && networkID != ""
}

// putNetworkVisibility is PUT
// /directory/list/appservice/{networkId}/{roomId}: an appservice
// publishes a room in (or takes it out of) its directory for one of its
// networks.
func (s *Service) putNetworkVisibility(r *http.Request, dev *httpapi.Device) (any, error) {
	reg, err := httpapi.RequireAppservice(dev)
	if err != nil {
		return nil, err
	}
	networkID, err := httpapi.PathParam(r, "networkId")
	if err != nil {
		return nil, err
	}
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	if networkID == "" || strings.Contains(networkID, "|") {
		return nil, matrixhttp.InvalidParam("Invalid network ID")
	}
	var req struct {
		Visibility string `json:"visibility"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.Visibility != "public" && req.Visibility != "private" {
		return nil, matrixhttp.InvalidParam("visibility must be public or private")
	}
	ctx := r.Context()
	_, err = s.rooms.SetRoomVisibility(ctx, &roomserverv1.SetRoomVisibilityRequest{
		RoomId: roomID, Visibility: req.Visibility, AppserviceId: reg.ID, NetworkId: networkID,
	})
	if err != nil {
		return nil, httpapi.FromGRPC(ctx, s.log, "SetRoomVisibility", err, nil)
	}
	return struct{}{}, nil
}

// protocols is GET /thirdparty/protocols.
func (s *Service) protocols(r *http.Request, _ *httpapi.Device) (any, error) {
	out := map[string]json.RawMessage{}
	if s.client == nil || s.set.Len() == 0 {
		return out, nil
	}
	resp, err := s.client.ThirdPartyProtocols(r.Context(), &appservicev1.ThirdPartyProtocolsRequest{})
	if err != nil {
		return nil, httpapi.FromGRPC(r.Context(), s.log, "ThirdPartyProtocols", err, nil)
	}
	for name, p := range resp.GetProtocols() {
		out[name] = p
	}
	return out, nil
}

// protocol is GET /thirdparty/protocol/{protocol}.
func (s *Service) protocol(r *http.Request, _ *httpapi.Device) (any, error) {
	name, err := httpapi.PathParam(r, "protocol")
	if err != nil {
		return nil, err
	}
	if s.client == nil || len(s.set.ByProtocol(name)) == 0 {
		return nil, matrixhttp.NotFound("Unknown protocol " + name)
	}
	resp, err := s.client.ThirdPartyProtocol(r.Context(), &appservicev1.ThirdPartyProtocolRequest{Protocol: name})
	if err != nil {
		return nil, httpapi.FromGRPC(r.Context(), s.log, "ThirdPartyProtocol", err, nil)
	}
	if resp.GetResult() != appservicev1.QueryResult_QUERY_RESULT_FOUND {
		return nil, matrixhttp.NotFound("Unknown protocol " + name)
	}
	return json.RawMessage(resp.GetProtocol()), nil
}

// The two kinds of third-party lookup.
const (
	lookupLocation = "location"
	lookupUser     = "user"
)

// lookup serves GET /thirdparty/{location,user}[/{protocol}]: the
// appservices' answers, concatenated. Without a protocol it is the
// reverse lookup (alias= or userid=).
func (s *Service) lookup(kind string, byProtocol bool) httpapi.HandlerFunc {
	return func(r *http.Request, _ *httpapi.Device) (any, error) {
		protocol := ""
		if byProtocol {
			p, err := httpapi.PathParam(r, "protocol")
			if err != nil {
				return nil, err
			}
			protocol = p
		} else {
			param := map[string]string{lookupLocation: "alias", lookupUser: "userid"}[kind]
			if r.URL.Query().Get(param) == "" {
				return nil, matrixhttp.MissingParam(param + " is required")
			}
		}
		if byProtocol && (s.client == nil || len(s.set.ByProtocol(protocol)) == 0) {
			return nil, matrixhttp.NotFound("Unknown protocol " + protocol)
		}
		if s.client == nil {
			return []any{}, nil
		}
		req := &appservicev1.ThirdPartyLookupRequest{Protocol: protocol, Query: r.URL.RawQuery}
		var resp *appservicev1.ThirdPartyLookupResponse
		var err error
		if kind == lookupLocation {
			resp, err = s.client.ThirdPartyLocations(r.Context(), req)
		} else {
			resp, err = s.client.ThirdPartyUsers(r.Context(), req)
		}
		if err != nil {
			return nil, httpapi.FromGRPC(r.Context(), s.log, "ThirdParty lookup", err, nil)
		}
		switch resp.GetResult() {
		case appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND:
			if byProtocol {
				return nil, matrixhttp.NotFound("Unknown protocol " + protocol)
			}
			return []any{}, nil
		case appservicev1.QueryResult_QUERY_RESULT_ERROR, appservicev1.QueryResult_QUERY_RESULT_TIMEOUT:
			return nil, matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "The application services could not be asked")
		}
		results := json.RawMessage(resp.GetResults())
		if len(results) == 0 {
			results = json.RawMessage("[]")
		}
		return results, nil
	}
}

// errNoNetwork is a third_party_instance_id no appservice network has.
var errNoNetwork = errors.New("unknown third_party_instance_id")

// Network resolves a /publicRooms third_party_instance_id to the
// appservice and network whose directory it names.
func (s *Service) Network(instanceID string) (appserviceID, networkID string, err error) {
	asID, networkID, ok := ParseInstanceID(instanceID)
	if !ok || s.set.ByID(asID) == nil {
		return "", "", errNoNetwork
	}
	return asID, networkID, nil
}
