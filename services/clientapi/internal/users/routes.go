package users

import (
	"net/http"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// routes are the discovery, registration, login, token and account endpoints.
func (s *Accounts) routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodGet, Path: "/_matrix/client/versions", Abs: true, Serve: s.versions},
		{Method: http.MethodGet, Path: "/.well-known/matrix/client", Abs: true, Serve: s.wellKnown},
		{Method: http.MethodGet, Path: "/capabilities", Auth: true, Serve: s.capabilities},
		{Method: http.MethodPost, Path: "/register", Limit: httpapi.LimitRegister, Serve: s.register},
		{Method: http.MethodGet, Path: "/register/available", Limit: httpapi.LimitRegister, Serve: s.registerAvailable},
		{Method: http.MethodGet, Path: "/login", Serve: s.loginFlows},
		{Method: http.MethodPost, Path: "/login", Limit: httpapi.LimitLogin, Serve: s.login},
		{Method: http.MethodPost, Path: "/logout", Auth: true, Serve: s.logout},
		{Method: http.MethodPost, Path: "/logout/all", Auth: true, Serve: s.logoutAll},
		{Method: http.MethodGet, Path: "/account/whoami", Auth: true, Serve: s.whoami},
		{Method: http.MethodGet, Path: "/_matrix/client/v1/register/m.login.registration_token/validity", Abs: true, Limit: httpapi.LimitRegister, Serve: s.registrationTokenValidity},
		{Method: http.MethodPost, Path: "/refresh", Limit: httpapi.LimitLogin, Serve: s.refresh},
		{Method: http.MethodPost, Path: "/_matrix/client/v1/login/get_token", Abs: true, Auth: true, Limit: httpapi.LimitLogin, Serve: s.getLoginToken},
		{Method: http.MethodPost, Path: "/account/password", Auth: true, Limit: httpapi.LimitLogin, Serve: s.changePassword},
		{Method: http.MethodPost, Path: "/account/deactivate", Auth: true, Limit: httpapi.LimitLogin, Serve: s.deactivate},
		{Method: http.MethodGet, Path: "/devices", Auth: true, Serve: s.listDevices},
		{Method: http.MethodGet, Path: "/devices/{deviceId}", Auth: true, Serve: s.getDevice},
		{Method: http.MethodPut, Path: "/devices/{deviceId}", Auth: true, Serve: s.putDevice},
		{Method: http.MethodDelete, Path: "/devices/{deviceId}", Auth: true, Limit: httpapi.LimitLogin, Serve: s.deleteDevice},
		{Method: http.MethodPost, Path: "/delete_devices", Auth: true, Limit: httpapi.LimitLogin, Serve: s.deleteDevicesBulk},
		{Method: http.MethodPost, Path: "/user/{userId}/openid/request_token", Auth: true, Limit: httpapi.LimitLogin, Serve: s.requestOpenIDToken},
	}
}

// routes are the profile and user directory endpoints.
func (s *Profiles) routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodGet, Path: "/profile/{userId}", Serve: s.getProfile},
		{Method: http.MethodGet, Path: "/profile/{userId}/{keyName}", Serve: s.getProfileField},
		{Method: http.MethodPut, Path: "/profile/{userId}/{keyName}", Auth: true, Serve: s.putProfileField},
		{Method: http.MethodDelete, Path: "/profile/{userId}/{keyName}", Auth: true, Serve: s.deleteProfileField},
		{Method: http.MethodPost, Path: "/user_directory/search", Auth: true, Serve: s.userDirectorySearch},
	}
}

// routes are the account data, tag and filter endpoints.
func (s *AccountData) routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodPut, Path: "/user/{userId}/account_data/{type}", Auth: true, Serve: s.putGlobalAccountData},
		{Method: http.MethodGet, Path: "/user/{userId}/account_data/{type}", Auth: true, Serve: s.getGlobalAccountData},
		{Method: http.MethodPut, Path: "/user/{userId}/rooms/{roomId}/account_data/{type}", Auth: true, Serve: s.putRoomAccountData},
		{Method: http.MethodGet, Path: "/user/{userId}/rooms/{roomId}/account_data/{type}", Auth: true, Serve: s.getRoomAccountData},
		{Method: http.MethodGet, Path: "/user/{userId}/rooms/{roomId}/tags", Auth: true, Serve: s.getTags},
		{Method: http.MethodPut, Path: "/user/{userId}/rooms/{roomId}/tags/{tag}", Auth: true, Serve: s.putTag},
		{Method: http.MethodDelete, Path: "/user/{userId}/rooms/{roomId}/tags/{tag}", Auth: true, Serve: s.deleteTag},
		{Method: http.MethodPost, Path: "/user/{userId}/filter", Auth: true, Serve: s.createFilter},
		{Method: http.MethodGet, Path: "/user/{userId}/filter/{filterId}", Auth: true, Serve: s.getFilter},
	}
}
