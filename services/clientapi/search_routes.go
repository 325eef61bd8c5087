package clientapi

import (
	"net/http"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// searchRoutes are issue #3's endpoints: search, reporting (with its
// admin API) and the legacy sync endpoints.
func (s *Service) searchRoutes() []httpapi.Route {
	const synapseAdmin = "/_synapse/admin/v1"
	return []httpapi.Route{

		// Legacy sync (deprecated; see legacy.go).
		{Method: http.MethodGet, Path: "/initialSync", Auth: true, Serve: s.initialSync},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/initialSync", Auth: true, Serve: s.roomInitialSync},
		{Method: http.MethodGet, Path: "/events", Auth: true, Serve: s.events},
		{Method: http.MethodGet, Path: "/events/{eventId}", Auth: true, Serve: s.getEventByID},
	}
}
