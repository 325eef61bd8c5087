// Package directory is the room-server's room metadata beside the event
// graph: the aliases of rooms and whether a room is published in the room
// directory (the server's list, or an application service network's).
package directory

import (
	"context"
	"errors"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// Service answers the room-server's alias and published-room-list RPCs.
// Its errors are gRPC statuses.
type Service struct {
	store      *store.Store
	serverName spec.ServerName
	// roomExists reports whether the room-server has the room (not only
	// out-of-room memberships of it).
	roomExists func(ctx context.Context, roomID string) (bool, error)
	// publish announces an alias's state after a change (roomID "": gone)
	// on MYELIN_ROOM_ALIASES; nil: nothing is announced.
	publish func(ctx context.Context, alias, roomID string) error
}

// New makes the directory over st.
func New(st *store.Store, serverName spec.ServerName, roomExists func(ctx context.Context, roomID string) (bool, error)) *Service {
	return &Service{store: st, serverName: serverName, roomExists: roomExists}
}

// PublishAliasChanges makes the directory announce each alias's state
// after SetRoomAlias and RemoveRoomAlias on MYELIN_ROOM_ALIASES, for the
// appservice service. The state is read after the change and published
// even when the call changed nothing, so a caller retrying after a failed
// publication publishes it then; a publication that fails is the call's
// error (Unavailable).
func (s *Service) PublishAliasChanges(js jetstream.JetStream) {
	s.publish = func(ctx context.Context, alias, roomID string) error {
		data, err := proto.Marshal(&roomserverv1.AliasChange{Alias: alias, RoomId: roomID})
		if err != nil {
			return err
		}
		if _, err := js.Publish(ctx, bus.RoomAliasSubject(alias), data); err != nil {
			return status.Errorf(codes.Unavailable, "publish the change of alias %s: %v", alias, err)
		}
		return nil
	}
}

// announce publishes the alias's current state.
func (s *Service) announce(ctx context.Context, alias string) error {
	if s.publish == nil {
		return nil
	}
	roomID, _, err := s.store.Alias(ctx, alias)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return s.publish(ctx, alias, roomID)
}

// Directory visibilities.
const (
	visibilityPublic  = "public"
	visibilityPrivate = "private"
)

// knownRoom fails with NotFound unless the room exists.
func (s *Service) knownRoom(ctx context.Context, roomID string) error {
	ok, err := s.roomExists(ctx, roomID)
	if err == nil && !ok {
		err = errRoomNotFound(roomID)
	}
	return err
}

func errRoomNotFound(roomID string) error {
	return status.Errorf(codes.NotFound, "room not found: %s", roomID)
}

func errBadRequest(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "invalid request: "+format, args...)
}

func (s *Service) ListRoomAliases(ctx context.Context, roomID string) (*roomserverv1.ListRoomAliasesResponse, error) {
	aliases, err := s.store.AliasesOf(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return &roomserverv1.ListRoomAliasesResponse{Aliases: aliases}, nil
}

func (s *Service) SetRoomVisibility(ctx context.Context, req *roomserverv1.SetRoomVisibilityRequest) error {
	var public bool
	switch req.GetVisibility() {
	case visibilityPublic:
		public = true
	case visibilityPrivate:
	default:
		return errBadRequest("visibility must be public or private")
	}
	if err := s.knownRoom(ctx, req.GetRoomId()); err != nil {
		return err
	}
	if (req.GetAppserviceId() == "") != (req.GetNetworkId() == "") {
		return errBadRequest("appservice_id and network_id go together")
	}
	if req.GetAppserviceId() != "" {
		return s.store.SetNetworkPublished(ctx, req.GetAppserviceId(), req.GetNetworkId(), req.GetRoomId(), public)
	}
	return s.store.SetPublished(ctx, req.GetRoomId(), public)
}

func (s *Service) GetRoomVisibility(ctx context.Context, roomID string) (*roomserverv1.GetRoomVisibilityResponse, error) {
	if ok, err := s.roomExists(ctx, roomID); err != nil {
		return nil, err
	} else if !ok {
		return &roomserverv1.GetRoomVisibilityResponse{}, nil
	}
	public, err := s.store.Published(ctx, roomID)
	if err != nil {
		return nil, err
	}
	resp := &roomserverv1.GetRoomVisibilityResponse{RoomExists: true, Visibility: visibilityPrivate}
	if public {
		resp.Visibility = visibilityPublic
	}
	networks, err := s.store.NetworkListings(ctx, roomID)
	if err != nil {
		return nil, err
	}
	for _, n := range networks {
		resp.Networks = append(resp.Networks, &roomserverv1.NetworkListing{AppserviceId: n[0], NetworkId: n[1]})
	}
	return resp, nil
}

// ListPublicRooms lists the server's directory, one application service
// network's, or all of them (ListPublicRoomsRequest).
func (s *Service) ListPublicRooms(ctx context.Context, req *roomserverv1.ListPublicRoomsRequest) (*roomserverv1.ListPublicRoomsResponse, error) {
	var rooms []string
	var err error
	switch {
	case req.GetIncludeAllNetworks():
		rooms, err = s.store.AllPublishedRooms(ctx)
	case req.GetAppserviceId() != "" || req.GetNetworkId() != "":
		rooms, err = s.store.NetworkPublishedRooms(ctx, req.GetAppserviceId(), req.GetNetworkId())
	default:
		rooms, err = s.store.PublishedRooms(ctx)
	}
	if err != nil {
		return nil, err
	}
	return &roomserverv1.ListPublicRoomsResponse{RoomIds: rooms}, nil
}

// checkAlias validates "#localpart:server".
func checkAlias(alias string) error {
	if len(alias) < 4 || alias[0] != '#' || len(alias) > 255 {
		return errBadRequest("invalid room alias %q", alias)
	}
	i := strings.IndexByte(alias, ':')
	if i < 2 {
		return errBadRequest("invalid room alias %q", alias)
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(alias[i+1:])); !ok {
		return errBadRequest("invalid server name in room alias %q", alias)
	}
	return nil
}

func (s *Service) SetRoomAlias(ctx context.Context, req *roomserverv1.SetRoomAliasRequest) (bool, error) {
	if err := checkAlias(req.GetAlias()); err != nil {
		return false, err
	}
	if err := s.knownRoom(ctx, req.GetRoomId()); err != nil {
		return false, err
	}
	created, err := s.store.SetAlias(ctx, req.GetAlias(), req.GetRoomId(), req.GetCreator())
	if err != nil {
		return false, err
	}
	return created, s.announce(ctx, req.GetAlias())
}

func (s *Service) GetRoomAlias(ctx context.Context, alias string) (*roomserverv1.GetRoomAliasResponse, error) {
	roomID, creator, err := s.store.Alias(ctx, alias)
	if errors.Is(err, store.ErrNotFound) {
		return &roomserverv1.GetRoomAliasResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	return &roomserverv1.GetRoomAliasResponse{RoomId: roomID, Servers: []string{string(s.serverName)}, Creator: creator}, nil
}

func (s *Service) RemoveRoomAlias(ctx context.Context, alias string) (bool, error) {
	removed, err := s.store.RemoveAlias(ctx, alias)
	if err != nil {
		return false, err
	}
	return removed, s.announce(ctx, alias)
}
