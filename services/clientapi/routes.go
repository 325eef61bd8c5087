package clientapi

import (
	"slices"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
)

// routes is the client-API's route table.
func (s *Service) routes() []httpapi.Route {
	return slices.Concat(s.users.Routes(), s.roomDomain.Routes(), s.history.Routes(), s.sync.Routes(), s.push.Routes(), s.keyEndpoints.Routes(), s.ephemeral.Routes(), s.appservices.Routes())
}

// RegisterHTTP mounts the client-server API on r (through the HTTP edge,
// internal/httpapi).
func (s *Service) RegisterHTTP(r chi.Router) {
	s.http.Mount(r, s.routes(), s.users.Accounts.MountFallbackPages,
		"/_matrix/client/*", "/.well-known/matrix/client", "/.well-known/matrix/support", "/_synapse/admin/*", users.LoginFallbackPath)
}
