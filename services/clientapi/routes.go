package clientapi

import (
	"net/http"
	"slices"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
)

// routes is the client-API's route table.
func (s *Service) routes() []httpapi.Route {
	return slices.Concat(s.coreRoutes(), s.history.Routes(), s.ephemeralRoutes(), s.searchRoutes(), s.push.Routes(), s.keyEndpoints.Routes(), s.extraRoutes(), s.users.Routes())
}

// coreRoutes are the routes defined in this file.
func (s *Service) coreRoutes() []httpapi.Route {
	return []httpapi.Route{
		// Rooms.
		{Method: http.MethodPost, Path: "/createRoom", Auth: true, Limit: httpapi.LimitCreateRoom, Serve: s.createRoom},
		{Method: http.MethodPost, Path: "/join/{roomIdOrAlias}", Auth: true, Serve: s.joinRoomIDOrAlias},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/join", Auth: true, Serve: s.joinRoom},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/invite", Auth: true, Serve: s.invite},
		{Method: http.MethodPost, Path: "/rooms/{roomId}/leave", Auth: true, Serve: s.leave},
		{Method: http.MethodGet, Path: "/joined_rooms", Auth: true, Serve: s.joinedRooms},
		{Method: http.MethodGet, Path: "/directory/room/{roomAlias}", Serve: s.getAlias},
		{Method: http.MethodPut, Path: "/directory/room/{roomAlias}", Auth: true, Serve: s.putAlias},
		{Method: http.MethodDelete, Path: "/directory/room/{roomAlias}", Auth: true, Serve: s.deleteAlias},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/aliases", Auth: true, Serve: s.roomAliases},
		{Method: http.MethodGet, Path: "/directory/list/room/{roomId}", Serve: s.getVisibility},
		{Method: http.MethodPut, Path: "/directory/list/room/{roomId}", Auth: true, Serve: s.putVisibility},
		{Method: http.MethodGet, Path: "/publicRooms", Serve: s.publicRoomsGet},
		{Method: http.MethodPost, Path: "/publicRooms", Auth: true, Serve: s.publicRoomsPost},

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

		// Sync.
		{Method: http.MethodGet, Path: "/sync", Auth: true, Serve: s.sync},
		{Method: http.MethodPut, Path: "/sendToDevice/{eventType}/{txnId}", Auth: true, Serve: s.sendToDevice},
	}
}

// RegisterHTTP mounts the client-server API on r (through the HTTP edge,
// internal/httpapi).
func (s *Service) RegisterHTTP(r chi.Router) {
	s.http.Mount(r, s.routes(), s.users.Accounts.MountFallbackPages,
		"/_matrix/client/*", "/.well-known/matrix/client", "/.well-known/matrix/support", "/_synapse/admin/*", users.LoginFallbackPath)
}
