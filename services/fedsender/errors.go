package fedsender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/matrix-org/gomatrix"

	"github.com/myelin-chat/myelin/pkg/federation"
)

// Sentinel errors; handler.go turns them into gRPC statuses.
var (
	// ErrBadRequest: malformed input (IDs, JSON).
	ErrBadRequest = errors.New("invalid request")
	// ErrDisabled: federation.enabled is off.
	ErrDisabled = federation.ErrDisabled
	// ErrUnreachable: the server could not be reached (DNS, connection,
	// TLS, timeout).
	ErrUnreachable = errors.New("server unreachable")
	// ErrBadResponse: the server answered with something that is not the
	// protocol's answer (not JSON, wrong shape, an event that does not
	// verify).
	ErrBadResponse = errors.New("bad response from server")
	// ErrRefused: the server refused the request (a RemoteError says how).
	ErrRefused = errors.New("refused by server")
	// ErrNoServers: no server to ask.
	ErrNoServers = errors.New("no server to ask")
	// ErrUnknownRoom: the room-server does not know the room.
	ErrUnknownRoom = errors.New("unknown room")
	// ErrNotAccepted: the room-server did not take what a server answered.
	ErrNotAccepted = errors.New("the room-server did not accept the event")
)

// RemoteError is a server's refusal: its HTTP status and Matrix error.
type RemoteError struct {
	Server     string
	HTTPStatus int
	ErrCode    string
	Message    string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s refused (HTTP %d %s): %s", e.Server, e.HTTPStatus, e.ErrCode, e.Message)
}

// Unwrap makes errors.Is(err, ErrRefused) hold.
func (e *RemoteError) Unwrap() error { return ErrRefused }

// remoteErr classifies an error of a request to server: a refusal with
// its status and errcode, a bad answer, or an unreachable server. The
// caller's own cancellation stays what it is.
func remoteErr(ctx context.Context, server string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, federation.ErrDisabled) {
		return err
	}
	var rerr *RemoteError
	if errors.As(err, &rerr) || errors.Is(err, ErrBadResponse) || errors.Is(err, ErrUnreachable) {
		return err
	}
	var herr gomatrix.HTTPError
	if errors.As(err, &herr) {
		re := &RemoteError{Server: server, HTTPStatus: herr.Code, ErrCode: "M_UNKNOWN", Message: http.StatusText(herr.Code)}
		var body gomatrix.RespError
		if json.Unmarshal(herr.Contents, &body) == nil && body.ErrCode != "" {
			re.ErrCode, re.Message = body.ErrCode, body.Err
		}
		return re
	}
	// The HTTP client's failures (DNS, connection, TLS, timeout) come as
	// *url.Error; anything else went wrong reading what the server said.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, server, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrBadResponse, server, err)
}

// badResponse is a server's answer that is not the protocol's.
func badResponse(server string, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrBadResponse, server, fmt.Sprintf(format, args...))
}

// rank orders errors of several servers: a refusal says most (the caller
// may not do this), then a server not knowing the room, then a bad
// answer, then an unreachable server.
func rank(err error) int {
	var re *RemoteError
	switch {
	case errors.As(err, &re) && re.HTTPStatus != http.StatusNotFound && re.HTTPStatus < 500:
		return 4
	case errors.As(err, &re) && re.HTTPStatus == http.StatusNotFound:
		return 3
	case errors.Is(err, ErrBadResponse), errors.Is(err, ErrNotAccepted):
		return 2
	case err != nil:
		return 1
	}
	return 0
}

// bestError picks the error to report of several servers' (the first of
// the highest rank).
func bestError(errs []error) error {
	var best error
	for _, err := range errs {
		if rank(err) > rank(best) {
			best = err
		}
	}
	if best == nil {
		return ErrNoServers
	}
	return best
}

func isHTTPError(err error) bool {
	var herr gomatrix.HTTPError
	return errors.As(err, &herr)
}

// failureObject is an error as /keys/query's and /keys/claim's failures
// report a server.
func failureObject(err error) map[string]any {
	var re *RemoteError
	if errors.As(err, &re) {
		return map[string]any{"errcode": re.ErrCode, "error": re.Message, "status": re.HTTPStatus}
	}
	return map[string]any{"errcode": "M_UNKNOWN", "error": err.Error(), "status": http.StatusServiceUnavailable}
}
