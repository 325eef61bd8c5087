package clientapi

import (
	"net/http"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// accountRoutes are the account endpoints of issue #4 (registration
// tokens, refresh, devices, password, deactivation, profiles, the admin
// API), kept apart from the base route table in routes.go.
func (s *Service) accountRoutes() []httpapi.Route {
	const synapseAdmin = "/_synapse/admin/v1"
	return []httpapi.Route{
		// Registration and login.
		{Method: http.MethodGet, Path: "/_matrix/client/v1/register/m.login.registration_token/validity", Abs: true, Limit: httpapi.LimitRegister, Serve: s.registrationTokenValidity},
		{Method: http.MethodPost, Path: "/refresh", Limit: httpapi.LimitLogin, Serve: s.refresh},
		{Method: http.MethodPost, Path: "/_matrix/client/v1/login/get_token", Abs: true, Auth: true, Limit: httpapi.LimitLogin, Serve: s.getLoginToken},

		// Account management.
		{Method: http.MethodPost, Path: "/account/password", Auth: true, Limit: httpapi.LimitLogin, Serve: s.changePassword},
		{Method: http.MethodPost, Path: "/account/deactivate", Auth: true, Limit: httpapi.LimitLogin, Serve: s.deactivate},
		{Method: http.MethodGet, Path: "/devices", Auth: true, Serve: s.listDevices},
		{Method: http.MethodGet, Path: "/devices/{deviceId}", Auth: true, Serve: s.getDevice},
		{Method: http.MethodPut, Path: "/devices/{deviceId}", Auth: true, Serve: s.putDevice},
		{Method: http.MethodDelete, Path: "/devices/{deviceId}", Auth: true, Limit: httpapi.LimitLogin, Serve: s.deleteDevice},
		{Method: http.MethodPost, Path: "/delete_devices", Auth: true, Limit: httpapi.LimitLogin, Serve: s.deleteDevicesBulk},

		// Profiles and the user directory.
		{Method: http.MethodGet, Path: "/profile/{userId}", Serve: s.getProfile},
		{Method: http.MethodGet, Path: "/profile/{userId}/{keyName}", Serve: s.getProfileField},
		{Method: http.MethodPut, Path: "/profile/{userId}/{keyName}", Auth: true, Serve: s.putProfileField},
		{Method: http.MethodDelete, Path: "/profile/{userId}/{keyName}", Auth: true, Serve: s.deleteProfileField},
		{Method: http.MethodPost, Path: "/user_directory/search", Auth: true, Serve: s.userDirectorySearch},

		// Account data and tags.
		{Method: http.MethodPut, Path: "/user/{userId}/account_data/{type}", Auth: true, Serve: s.putGlobalAccountData},
		{Method: http.MethodGet, Path: "/user/{userId}/account_data/{type}", Auth: true, Serve: s.getGlobalAccountData},
		{Method: http.MethodPut, Path: "/user/{userId}/rooms/{roomId}/account_data/{type}", Auth: true, Serve: s.putRoomAccountData},
		{Method: http.MethodGet, Path: "/user/{userId}/rooms/{roomId}/account_data/{type}", Auth: true, Serve: s.getRoomAccountData},
		{Method: http.MethodGet, Path: "/user/{userId}/rooms/{roomId}/tags", Auth: true, Serve: s.getTags},
		{Method: http.MethodPut, Path: "/user/{userId}/rooms/{roomId}/tags/{tag}", Auth: true, Serve: s.putTag},
		{Method: http.MethodDelete, Path: "/user/{userId}/rooms/{roomId}/tags/{tag}", Auth: true, Serve: s.deleteTag},

		// Synapse-compatible admin API.
		{Method: http.MethodGet, Path: synapseAdmin + "/register", Abs: true, Limit: httpapi.LimitRegister, Serve: s.adminRegisterNonce},
		{Method: http.MethodPost, Path: synapseAdmin + "/register", Abs: true, Limit: httpapi.LimitRegister, Serve: s.adminRegister},
		{Method: http.MethodGet, Path: synapseAdmin + "/registration_tokens", Abs: true, Auth: true, Serve: s.listRegistrationTokens},
		{Method: http.MethodPost, Path: synapseAdmin + "/registration_tokens/new", Abs: true, Auth: true, Serve: s.createRegistrationToken},
		{Method: http.MethodGet, Path: synapseAdmin + "/registration_tokens/{token}", Abs: true, Auth: true, Serve: s.getRegistrationToken},
		{Method: http.MethodPut, Path: synapseAdmin + "/registration_tokens/{token}", Abs: true, Auth: true, Serve: s.updateRegistrationToken},
		{Method: http.MethodDelete, Path: synapseAdmin + "/registration_tokens/{token}", Abs: true, Auth: true, Serve: s.deleteRegistrationToken},
	}
}
