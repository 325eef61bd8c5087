// Package history serves what clients read of a room's past from the
// client-API's copy of room events: /messages, /context, /event,
// /relations, /threads and /search, with the history visibility rules,
// erased senders, ignored users and bundled aggregations that every reader
// of that copy applies (/sync included, through VisibilityFilter,
// AggregateChildren and ApplyErasure).
package history

import (
	"context"
	"net/http"

	"go.uber.org/zap"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Service reads room history for clients.
type Service struct {
	store *store.Store
	rooms roomserverv1.RoomServiceClient
	log   *zap.Logger
	// erasures is this replica's copy of the erased users (erasure.go).
	erasures erasureCache
	// fed fetches history from other servers (backfill.go); nil: none.
	fed Federation
}

// New returns the history reader over st, asking rooms for what the copy
// does not have yet.
func New(st *store.Store, rooms roomserverv1.RoomServiceClient, fed Federation, log *zap.Logger) *Service {
	return &Service{store: st, rooms: rooms, fed: fed, log: log}
}

// Routes are the history endpoints.
func (s *Service) Routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodGet, Path: "/rooms/{roomId}/messages", Auth: true, Serve: s.messages},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/event/{eventId}", Auth: true, Serve: s.getEvent},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/context/{eventId}", Auth: true, Serve: s.eventContext},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}", Abs: true, Auth: true, Serve: s.relations},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}", Abs: true, Auth: true, Serve: s.relations},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", Abs: true, Auth: true, Serve: s.relations},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/rooms/{roomId}/threads", Abs: true, Auth: true, Serve: s.threads},
		{Method: http.MethodPost, Path: "/search", Auth: true, Serve: s.search},
	}
}

// fromGRPC converts a peer service's error into a Matrix error
// (httpapi.FromGRPC).
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}
