// Package rooms is the client-API's rooms domain: creating rooms,
// membership and member lists, room state, sending and redacting events,
// aliases, the room directory and /publicRooms, upgrades, the space
// hierarchy and room summaries, timestamp_to_event, mutual rooms, and
// content reports. Writes go to the room-server; each returns once the
// client-API's copy has its event (read your own writes).
package rooms

import (
	"context"
	"net/http"
	"slices"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/appservice"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// Config is what the rooms domain takes of the client-API's settings.
type Config struct {
	// DefaultRoomVersion is used by /createRoom when the client names none.
	DefaultRoomVersion string
}

// StoredWaiter waits until the client-API's copy has an event
// (notifier.Notifier).
type StoredWaiter interface {
	AwaitStored(ctx context.Context, eventID string, fresh bool) error
}

// base holds what every part of the domain uses.
type base struct {
	cfg        Config
	log        *zap.Logger
	serverName string
	store      *store.Store
	accounts   *accounts.Store
	rooms      roomserverv1.RoomServiceClient
	// history decides what of a room a user may read.
	history *history.Service
	// users adds profiles to joins and keeps guests out.
	users    *users.Service
	notifier StoredWaiter
	// fed makes requests to other servers (nil: federation is off).
	fed Federation
	// appservices hold alias namespaces; asQueries asks them about
	// unknown aliases and resolves their networks (appservice.go). Nil: none.
	appservices *appservice.Set
	asQueries   AppserviceQueries
}

// Service is the rooms domain.
type Service struct {
	Rooms     *Rooms
	Directory *Directory
	Reports   *Reports
}

// Rooms: creation, membership, members, state, send, redact, upgrades,
// the hierarchy and summaries, timestamp_to_event, mutual rooms.
type Rooms struct {
	*base
}

// Directory: aliases, directory visibility and /publicRooms.
type Directory struct {
	*base
}

// Reports: content reports and their admin API.
type Reports struct {
	*base
}

// New returns the rooms domain.
func New(cfg Config, serverName string, st *store.Store, rooms roomserverv1.RoomServiceClient, fed Federation, hist *history.Service, u *users.Service, waiter StoredWaiter, log *zap.Logger) *Service {
	b := &base{cfg: cfg, log: log, serverName: serverName, store: st, accounts: accounts.New(st), rooms: rooms, fed: fed, history: hist, users: u, notifier: waiter}
	return &Service{Rooms: &Rooms{base: b}, Directory: &Directory{base: b}, Reports: &Reports{base: b}}
}

// Routes are the rooms endpoints.
func (s *Service) Routes() []httpapi.Route {
	return slices.Concat(s.Rooms.routes(), s.Directory.routes(), s.Reports.routes())
}

// routes are the room, membership, state, event and room information endpoints.
func (s *Rooms) routes() []httpapi.Route {
	return []httpapi.Route{
		// Rooms.
		{Method: http.MethodPost, Path: "/createRoom", Auth: true, Limit: httpapi.LimitCreateRoom, Serve: s.createRoom},
		{Method: http.MethodPost, Path: "/join/{roomIdOrAlias}", Auth: true, Serve: s.joinRoomIDOrAlias},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/join", Auth: true, Serve: s.joinRoom},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/invite", Auth: true, Serve: s.invite},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/leave", Auth: true, Serve: s.leave},
		{Method: http.MethodGet, Path: "/joined_rooms", Auth: true, Serve: s.joinedRooms},

		// Membership beyond join/invite/leave (membership.go) and member lists (members.go).
		{Method: http.MethodPost, Path: "/rooms/{roomId}/kick", Auth: true, Serve: s.kick},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/ban", Auth: true, Serve: s.ban},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/unban", Auth: true, Serve: s.unban},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/forget", Auth: true, Serve: s.forget},
		{Method: http.MethodPost, Path: "/knock/{roomIdOrAlias}", Auth: true, Serve: s.knock},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/members", Auth: true, Serve: s.members},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/joined_members", Auth: true, Serve: s.joinedMembers},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/upgrade", Auth: true, Limit: httpapi.LimitCreateRoom, Serve: s.upgradeRoom},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/rooms/{roomId}/hierarchy", Abs: true, Auth: true, Serve: s.hierarchy},

		// Events.
		{Method: http.MethodPut, Path: "/rooms/{roomId}/send/{eventType}/{txnId}", Auth: true, Limit: httpapi.LimitSend, Serve: s.send},
		{Method: http.MethodPut, Path: "/rooms/{roomId}/state/{eventType}", Auth: true, Limit: httpapi.LimitSend, Serve: s.putState},
		{Method: http.MethodPut, Path: "/rooms/{roomId}/state/{eventType}/", Auth: true, Limit: httpapi.LimitSend, Serve: s.putState},
		{Method: http.MethodPut, Path: "/rooms/{roomId}/state/{eventType}/{stateKey}", Auth: true, Limit: httpapi.LimitSend, Serve: s.putState},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/state", Auth: true, Serve: s.getAllState},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/state/{eventType}", Auth: true, Serve: s.getState},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/state/{eventType}/", Auth: true, Serve: s.getState},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/state/{eventType}/{stateKey}", Auth: true, Serve: s.getState},
		{Method: http.MethodPut, Path: "/rooms/{roomId}/redact/{eventId}/{txnId}", Auth: true, Limit: httpapi.LimitSend, Serve: s.redact},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", Abs: true, Auth: true, Serve: s.timestampToEvent},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/mutual_rooms", Abs: true, Auth: true, Serve: s.mutualRooms},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/room_summary/{roomIdOrAlias}", Abs: true, OptionalAuth: true, Serve: s.roomSummary},
	}
}

// routes are the alias, directory and public room endpoints.
func (s *Directory) routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodGet, Path: "/directory/room/{roomAlias}", Serve: s.getAlias},
		{Method: http.MethodPut, Path: "/directory/room/{roomAlias}", Auth: true, Serve: s.putAlias},
		{Method: http.MethodDelete, Path: "/directory/room/{roomAlias}", Auth: true, Serve: s.deleteAlias},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/aliases", Auth: true, Serve: s.roomAliases},
		{Method: http.MethodGet, Path: "/directory/list/room/{roomId}", Serve: s.getVisibility},
		{Method: http.MethodPut, Path: "/directory/list/room/{roomId}", Auth: true, Serve: s.putVisibility},
		{Method: http.MethodGet, Path: "/publicRooms", Serve: s.publicRoomsGet},
		{Method: http.MethodPost, Path: "/publicRooms", Auth: true, Serve: s.publicRoomsPost},
	}
}

// routes are the reporting endpoints and their admin API.
func (s *Reports) routes() []httpapi.Route {
	const synapseAdmin = "/_synapse/admin/v1"
	return []httpapi.Route{
		{Method: http.MethodPost, Path: "/rooms/{roomId}/report/{eventId}", Auth: true, Limit: httpapi.LimitSend, Serve: s.reportEvent},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/report", Auth: true, Limit: httpapi.LimitSend, Serve: s.reportRoom},
		{Method: http.MethodPost, Path: "/users/{userId}/report", Auth: true, Limit: httpapi.LimitSend, Serve: s.reportUser},
		{Method: http.MethodGet, Path: synapseAdmin + "/event_reports", Abs: true, Auth: true, Serve: s.listEventReports},
		{Method: http.MethodGet, Path: synapseAdmin + "/event_reports/{reportId}", Abs: true, Auth: true, Serve: s.getEventReport},
		{Method: http.MethodDelete, Path: synapseAdmin + "/event_reports/{reportId}", Abs: true, Auth: true, Serve: s.deleteEventReport},
	}
}

// fromGRPC converts a peer service's error into a Matrix error
// (httpapi.FromGRPC).
func (s *base) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}
