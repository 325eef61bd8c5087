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
	return slices.Concat(s.coreRoutes(), s.history.Routes(), s.ephemeral.Routes(), s.searchRoutes(), s.push.Routes(), s.keyEndpoints.Routes(), s.users.Routes(), s.roomDomain.Routes())
}

// coreRoutes are the routes defined in this file.
func (s *Service) coreRoutes() []httpapi.Route {
	return []httpapi.Route{
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
