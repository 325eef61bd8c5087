package httpapi

// Who may call what: the routes guests may call, and those locked and
// suspended accounts may not (account moderation, users' moderation.go).

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

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
func guestAllowed(rt Route) bool { return guestRoutes[rt.Method+" "+rt.Path] }

// lockedAllowed are the routes a locked account may still use.
var lockedAllowed = map[string]bool{"POST /logout": true, "POST /logout/all": true}

// suspendedBlocked are the routes a suspended account may not use.
var suspendedBlocked = map[string]bool{
	"POST /createRoom":                                 true,
	"POST /join/{roomIdOrAlias}":                       true,
	"POST /rooms/{roomId}/join":                        true,
	"POST /knock/{roomIdOrAlias}":                      true,
	"POST /rooms/{roomId}/invite":                      true,
	"POST /rooms/{roomId}/kick":                        true,
	"POST /rooms/{roomId}/ban":                         true,
	"POST /rooms/{roomId}/unban":                       true,
	"POST /rooms/{roomId}/upgrade":                     true,
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":     true, // redactions excepted
	"PUT /rooms/{roomId}/state/{eventType}":            true,
	"PUT /rooms/{roomId}/state/{eventType}/":           true,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey}": true,
	"PUT /profile/{userId}/{keyName}":                  true,
	"DELETE /profile/{userId}/{keyName}":               true,
}

// moderationCheck is what the middleware asks of an authenticated
// request: a locked or suspended account's refusal, or nil.
func moderationCheck(rt Route, r *http.Request, dev *Device) error {
	key := rt.Method + " " + rt.Path
	if dev.Locked && !lockedAllowed[key] {
		return ErrLocked()
	}
	// /send of a redaction is allowed (redact checks whose event it is);
	// every other blocked route is blocked whatever its event type.
	isRedaction := key == sendRoute && chi.URLParam(r, "eventType") == "m.room.redaction"
	if dev.Suspended && suspendedBlocked[key] && !isRedaction {
		return ErrSuspended()
	}
	return nil
}

const sendRoute = "PUT /rooms/{roomId}/send/{eventType}/{txnId}"
