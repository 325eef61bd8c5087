package clientapi

import "net/http"

// searchRoutes are issue #3's endpoints: search, reporting (with its
// admin API) and the legacy sync endpoints.
func (s *Service) searchRoutes() []route {
	const synapseAdmin = "/_synapse/admin/v1"
	return []route{
		{method: http.MethodPost, path: "/search", auth: true, serve: s.search},

		{method: http.MethodPost, path: "/rooms/{roomId}/report/{eventId}", auth: true, limit: limitSend, serve: s.reportEvent},
		{method: http.MethodPost, path: "/rooms/{roomId}/report", auth: true, limit: limitSend, serve: s.reportRoom},
		{method: http.MethodPost, path: "/users/{userId}/report", auth: true, limit: limitSend, serve: s.reportUser},
		{method: http.MethodGet, path: synapseAdmin + "/event_reports", abs: true, auth: true, serve: s.listEventReports},
		{method: http.MethodGet, path: synapseAdmin + "/event_reports/{reportId}", abs: true, auth: true, serve: s.getEventReport},
		{method: http.MethodDelete, path: synapseAdmin + "/event_reports/{reportId}", abs: true, auth: true, serve: s.deleteEventReport},

		// Legacy sync (deprecated; see legacy.go).
		{method: http.MethodGet, path: "/initialSync", auth: true, serve: s.initialSync},
		{method: http.MethodGet, path: "/rooms/{roomId}/initialSync", auth: true, serve: s.roomInitialSync},
		{method: http.MethodGet, path: "/events", auth: true, serve: s.events},
		{method: http.MethodGet, path: "/events/{eventId}", auth: true, serve: s.getEventByID},
	}
}
