package roomserver

// Room metadata beside the event graph: the aliases of a room and whether
// it is published in the room directory.

import (
	"context"
	"errors"
	"fmt"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// roomDirectory holds the alias and published-room-list RPCs (a view of
// the Service).
type roomDirectory struct{ *Service }

// Directory visibilities.
const (
	visibilityPublic  = "public"
	visibilityPrivate = "private"
)

// knownRoom fails with ErrRoomNotFound unless the room exists.
func (s roomDirectory) knownRoom(ctx context.Context, roomID string) error {
	_, err := s.room(ctx, roomID)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrRoomNotFound, roomID)
	}
	return err
}

func (s roomDirectory) listRoomAliases(ctx context.Context, roomID string) (*roomserverv1.ListRoomAliasesResponse, error) {
	aliases, err := s.store.AliasesOf(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return &roomserverv1.ListRoomAliasesResponse{Aliases: aliases}, nil
}

func (s roomDirectory) setRoomVisibility(ctx context.Context, req *roomserverv1.SetRoomVisibilityRequest) error {
	var public bool
	switch req.GetVisibility() {
	case visibilityPublic:
		public = true
	case visibilityPrivate:
	default:
		return fmt.Errorf("%w: visibility must be public or private", ErrBadRequest)
	}
	if err := s.knownRoom(ctx, req.GetRoomId()); err != nil {
		return err
	}
	if (req.GetAppserviceId() == "") != (req.GetNetworkId() == "") {
		return fmt.Errorf("%w: appservice_id and network_id go together", ErrBadRequest)
	}
	if req.GetAppserviceId() != "" {
		return s.store.SetNetworkPublished(ctx, req.GetAppserviceId(), req.GetNetworkId(), req.GetRoomId(), public)
	}
	return s.store.SetPublished(ctx, req.GetRoomId(), public)
}

func (s roomDirectory) getRoomVisibility(ctx context.Context, roomID string) (*roomserverv1.GetRoomVisibilityResponse, error) {
	if err := s.knownRoom(ctx, roomID); errors.Is(err, ErrRoomNotFound) {
		return &roomserverv1.GetRoomVisibilityResponse{}, nil
	} else if err != nil {
		return nil, err
	}
	public, err := s.store.Published(ctx, roomID)
	if err != nil {
		return nil, err
	}
	resp := &roomserverv1.GetRoomVisibilityResponse{RoomExists: true, Visibility: visibilityPrivate}
	if public {
		resp.Visibility = visibilityPublic
	}
	return resp, nil
}

// listPublicRooms lists the server's directory, one application service
// network's, or all of them (ListPublicRoomsRequest).
func (s roomDirectory) listPublicRooms(ctx context.Context, req *roomserverv1.ListPublicRoomsRequest) (*roomserverv1.ListPublicRoomsResponse, error) {
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
