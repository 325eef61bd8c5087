package clientapi

import "net/http"

// accountRoutes are the account endpoints of issue #4 (registration
// tokens, refresh, devices, password, deactivation, profiles, the admin
// API), kept apart from the base route table in routes.go.
func (s *Service) accountRoutes() []route {
	const synapseAdmin = "/_synapse/admin/v1"
	return []route{
		// Registration and login.
		{method: http.MethodGet, path: "/_matrix/client/v1/register/m.login.registration_token/validity", abs: true, limit: limitRegister, serve: s.registrationTokenValidity},
		{method: http.MethodPost, path: "/refresh", limit: limitLogin, serve: s.refresh},
		{method: http.MethodPost, path: "/_matrix/client/v1/login/get_token", abs: true, auth: true, limit: limitLogin, serve: s.getLoginToken},

		// Account management.
		{method: http.MethodPost, path: "/account/password", auth: true, limit: limitLogin, serve: s.changePassword},
		{method: http.MethodPost, path: "/account/deactivate", auth: true, limit: limitLogin, serve: s.deactivate},
		{method: http.MethodGet, path: "/devices", auth: true, serve: s.listDevices},
		{method: http.MethodGet, path: "/devices/{deviceId}", auth: true, serve: s.getDevice},
		{method: http.MethodPut, path: "/devices/{deviceId}", auth: true, serve: s.putDevice},
		{method: http.MethodDelete, path: "/devices/{deviceId}", auth: true, limit: limitLogin, serve: s.deleteDevice},
		{method: http.MethodPost, path: "/delete_devices", auth: true, limit: limitLogin, serve: s.deleteDevicesBulk},

		// Profiles and the user directory.
		{method: http.MethodGet, path: "/profile/{userId}", serve: s.getProfile},
		{method: http.MethodGet, path: "/profile/{userId}/{keyName}", serve: s.getProfileField},
		{method: http.MethodPut, path: "/profile/{userId}/{keyName}", auth: true, serve: s.putProfileField},
		{method: http.MethodDelete, path: "/profile/{userId}/{keyName}", auth: true, serve: s.deleteProfileField},
		{method: http.MethodPost, path: "/user_directory/search", auth: true, serve: s.userDirectorySearch},

		// Account data and tags.
		{method: http.MethodPut, path: "/user/{userId}/account_data/{type}", auth: true, serve: s.putGlobalAccountData},
		{method: http.MethodGet, path: "/user/{userId}/account_data/{type}", auth: true, serve: s.getGlobalAccountData},
		{method: http.MethodPut, path: "/user/{userId}/rooms/{roomId}/account_data/{type}", auth: true, serve: s.putRoomAccountData},
		{method: http.MethodGet, path: "/user/{userId}/rooms/{roomId}/account_data/{type}", auth: true, serve: s.getRoomAccountData},
		{method: http.MethodGet, path: "/user/{userId}/rooms/{roomId}/tags", auth: true, serve: s.getTags},
		{method: http.MethodPut, path: "/user/{userId}/rooms/{roomId}/tags/{tag}", auth: true, serve: s.putTag},
		{method: http.MethodDelete, path: "/user/{userId}/rooms/{roomId}/tags/{tag}", auth: true, serve: s.deleteTag},

		// Synapse-compatible admin API.
		{method: http.MethodGet, path: synapseAdmin + "/register", abs: true, limit: limitRegister, serve: s.adminRegisterNonce},
		{method: http.MethodPost, path: synapseAdmin + "/register", abs: true, limit: limitRegister, serve: s.adminRegister},
		{method: http.MethodGet, path: synapseAdmin + "/registration_tokens", abs: true, auth: true, serve: s.listRegistrationTokens},
		{method: http.MethodPost, path: synapseAdmin + "/registration_tokens/new", abs: true, auth: true, serve: s.createRegistrationToken},
		{method: http.MethodGet, path: synapseAdmin + "/registration_tokens/{token}", abs: true, auth: true, serve: s.getRegistrationToken},
		{method: http.MethodPut, path: synapseAdmin + "/registration_tokens/{token}", abs: true, auth: true, serve: s.updateRegistrationToken},
		{method: http.MethodDelete, path: synapseAdmin + "/registration_tokens/{token}", abs: true, auth: true, serve: s.deleteRegistrationToken},
	}
}

// guestRoutes are the endpoints guests may call, by method and route path
// as written in the route tables: the lists of the spec's guest access
// module that Myelin serves, plus logout and the discovery endpoints.
// Every other authenticated endpoint answers guests with
// M_GUEST_ACCESS_FORBIDDEN.
var guestRoutes = map[string]bool{
	"GET /rooms/{roomId}/state":                        true,
	"GET /rooms/{roomId}/state/{eventType}":            true,
	"GET /rooms/{roomId}/state/{eventType}/":           true,
	"GET /rooms/{roomId}/state/{eventType}/{stateKey}": true,
	"GET /rooms/{roomId}/context/{eventId}":            true,
	"GET /rooms/{roomId}/event/{eventId}":              true,
	"GET /rooms/{roomId}/messages":                     true,
	"GET /rooms/{roomId}/members":                      true,
	"GET /rooms/{roomId}/initialSync":                  true,
	"GET /sync":                                        true,
	"GET /events":                                      true,
	"POST /rooms/{roomId}/join":                        true,
	"POST /rooms/{roomId}/leave":                       true,
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":     true,
	"PUT /rooms/{roomId}/state/{eventType}":            true,
	"PUT /rooms/{roomId}/state/{eventType}/":           true,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey}": true,
	"PUT /sendToDevice/{eventType}/{txnId}":            true,
	"PUT /profile/{userId}/{keyName}":                  true, // displayname only: checked by the handler
	"DELETE /profile/{userId}/{keyName}":               true, // displayname only: checked by the handler
	"GET /devices":                                     true,
	"GET /devices/{deviceId}":                          true,
	"PUT /devices/{deviceId}":                          true,
	"GET /account/whoami":                              true,
	"POST /keys/upload":                                true,
	"POST /keys/query":                                 true,
	"POST /keys/claim":                                 true,
	"POST /logout":                                     true,
	"GET /capabilities":                                true,
	"POST /user/{userId}/filter":                       true,
	"GET /user/{userId}/filter/{filterId}":             true,
}

// guestAllowed reports whether a guest may call the route.
func guestAllowed(rt route) bool { return guestRoutes[rt.method+" "+rt.path] }
