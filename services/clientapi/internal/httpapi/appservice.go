package httpapi

// Application services' requests: an as_token in place of an access token
// (application-service API, "Client-Server API Extensions"). The request
// acts as the appservice's sender user, or as the user_id it asserts
// (which must be in its users namespaces), on the device_id it asserts
// (which must be that user's) or on no device.

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// Errors of AppserviceUsers.
var (
	// ErrUnknownUser: no active account has that user ID.
	ErrUnknownUser = errors.New("unknown user")
	// ErrUnknownDevice: the user has no device with that ID.
	ErrUnknownDevice = errors.New("unknown device")
)

// AppserviceUsers resolves the user (and device, when deviceID is set) an
// appservice acts as to a device (the users domain's): ErrUnknownUser,
// ErrUnknownDevice.
type AppserviceUsers interface {
	AppserviceDevice(ctx context.Context, userID, deviceID string) (*Device, error)
}

// SetAppservices makes the server accept the registrations' as_tokens.
// users resolves the users they act as.
func (s *Server) SetAppservices(set *appservice.Set, users AppserviceUsers) {
	s.appservices, s.asUsers = set, users
}

// Appservice is the registration whose as_token the request carries, or
// nil.
func (s *Server) Appservice(r *http.Request) *appservice.Registration {
	token, ok := RequestToken(r)
	if !ok {
		return nil
	}
	return s.appservices.ByASToken(token)
}

// authenticateAppservice is Authenticate for an as_token: the device of
// the asserted user_id (default: the appservice's sender) and device_id
// (default: none).
func (s *Server) authenticateAppservice(r *http.Request, reg *appservice.Registration) (*Device, error) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		userID = string(reg.SenderUserID())
	}
	if !reg.CanMasqueradeAs(userID) {
		return nil, matrixhttp.Forbidden("Application service cannot masquerade as this user (" + userID + ")")
	}
	dev, err := s.asUsers.AppserviceDevice(r.Context(), userID, q.Get("device_id"))
	switch {
	case errors.Is(err, ErrUnknownUser):
		return nil, matrixhttp.Forbidden("Application service has not registered this user (" + userID + ")")
	case errors.Is(err, ErrUnknownDevice):
		return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_UNKNOWN_DEVICE", "Device %s is not one of %s's devices", q.Get("device_id"), userID)
	case err != nil:
		return nil, err
	}
	dev.Appservice = reg
	return dev, nil
}

// RequireAppservice refuses callers who did not authenticate with an
// as_token (403 M_FORBIDDEN) and returns their registration.
func RequireAppservice(dev *Device) (*appservice.Registration, error) {
	if dev == nil || dev.Appservice == nil {
		return nil, matrixhttp.Forbidden("Only application services may use this endpoint")
	}
	return dev.Appservice, nil
}

// Exclusive is 400 M_EXCLUSIVE: a user ID or alias an application service
// holds (or, for an application service, one outside its namespaces).
func Exclusive(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_EXCLUSIVE", "%s", msg)
}

// rateLimited reports whether the request's caller is rate-limited:
// admins and application services registered with rate_limited: false
// (whoever they act as, on authenticated routes and on /register and
// /login alike) are not.
func (s *Server) rateLimited(r *http.Request, dev *Device) bool {
	if dev != nil && dev.IsAdmin {
		return false
	}
	reg := s.Appservice(r)
	if dev != nil {
		reg = dev.Appservice
	}
	return reg == nil || reg.IsRateLimited()
}

// maxTS is the largest origin_server_ts canonical JSON can carry (2^53-1).
const maxTS = 1<<53 - 1

// AppserviceTS is the ts query parameter of an application service's PUT
// send or state (timestamp massaging): the event's origin_server_ts, nil
// when absent or when the caller is no appservice. A value
// origin_server_ts cannot take is 400 M_INVALID_PARAM.
func AppserviceTS(r *http.Request, dev *Device) (*int64, error) {
	v := r.URL.Query().Get("ts")
	if v == "" || dev == nil || dev.Appservice == nil {
		return nil, nil
	}
	ts, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ts < 0 || ts > maxTS {
		return nil, matrixhttp.InvalidParam("ts must be an integer from 0 to 2^53-1 (ms since the epoch)")
	}
	return &ts, nil
}
