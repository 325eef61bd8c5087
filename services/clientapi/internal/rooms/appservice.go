package rooms

// Application services in the rooms domain: the alias namespaces they
// hold (M_EXCLUSIVE), the aliases they are asked about when a client looks
// one up that does not exist yet, and their network directories in
// /publicRooms.

import (
	"context"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// AppserviceQueries asks appservices about aliases and resolves their
// networks (internal/appservices).
type AppserviceQueries interface {
	QueryAlias(ctx context.Context, alias string) (asked bool, err error)
	Network(instanceID string) (appserviceID, networkID string, err error)
}

// SetAppservices gives the domain the application service registrations
// and the queries to them (nil: none).
func (s *Service) SetAppservices(set *appservice.Set, q AppserviceQueries) {
	s.Rooms.appservices, s.Rooms.asQueries = set, q
}

// checkAliasNamespace refuses an alias the caller may not create (400
// M_EXCLUSIVE): for an application service, one outside its aliases
// namespaces or held exclusively by another; for anyone else, one an
// application service holds exclusively.
func (s *base) checkAliasNamespace(dev *httpapi.Device, alias string) error {
	owner := s.appservices.ExclusiveAliasOwner(alias)
	if dev.Appservice != nil {
		if !dev.Appservice.IsInterestedInAlias(alias) || (owner != nil && owner != dev.Appservice) {
			return httpapi.Exclusive("The alias " + alias + " is outside the application service's namespaces")
		}
		return nil
	}
	if owner != nil {
		return httpapi.Exclusive("The alias " + alias + " is reserved by an application service")
	}
	return nil
}

// resolveAlias is the room-server's GetRoomAlias; an alias it does not
// know that is in an application service's aliases namespace is asked
// about (the appservice may create it), then looked up again. An
// appservice that fails or does not answer in time is the client's error.
func (s *base) resolveAlias(ctx context.Context, alias string) (*roomserverv1.GetRoomAliasResponse, error) {
	resp, err := s.rooms.GetRoomAlias(ctx, &roomserverv1.GetRoomAliasRequest{Alias: alias})
	if err != nil {
		return nil, s.fromGRPC(ctx, "GetRoomAlias", err, nil)
	}
	if resp.GetRoomId() != "" || s.asQueries == nil {
		return resp, nil
	}
	asked, err := s.asQueries.QueryAlias(ctx, alias)
	if err != nil || !asked {
		return resp, err
	}
	resp, err = s.rooms.GetRoomAlias(ctx, &roomserverv1.GetRoomAliasRequest{Alias: alias})
	if err != nil {
		return nil, s.fromGRPC(ctx, "GetRoomAlias", err, nil)
	}
	return resp, nil
}

// publicRoomsList is the room-server's list for a /publicRooms request:
// the server's directory; one application service network's
// (third_party_instance_id); or every directory (include_all_networks).
func (s *Directory) publicRoomsList(ctx context.Context, req publicRoomsRequest) (*roomserverv1.ListPublicRoomsResponse, error) {
	list := &roomserverv1.ListPublicRoomsRequest{IncludeAllNetworks: req.IncludeAllNetworks}
	if req.ThirdPartyInstanceID != "" {
		if req.IncludeAllNetworks {
			return nil, matrixhttp.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
		}
		if s.asQueries == nil {
			return nil, matrixhttp.InvalidParam("Unknown third_party_instance_id")
		}
		asID, networkID, err := s.asQueries.Network(req.ThirdPartyInstanceID)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Unknown third_party_instance_id")
		}
		list.AppserviceId, list.NetworkId = asID, networkID
	}
	resp, err := s.rooms.ListPublicRooms(ctx, list)
	if err != nil {
		return nil, s.fromGRPC(ctx, "ListPublicRooms", err, nil)
	}
	return resp, nil
}
