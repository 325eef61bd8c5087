// Package matrixhttp writes JSON responses and Matrix errors at the HTTP
// edge. Errors become Matrix errcodes here and nowhere else.
package matrixhttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

// Error is a Matrix error response: {"errcode": ..., "error": ...}.
type Error struct {
	Status  int    `json:"-"`
	ErrCode string `json:"errcode"`
	Message string `json:"error"`
	// RetryAfterMS is set for M_LIMIT_EXCEEDED.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
	// Extra fields merged into the body (e.g. UIA flows).
	Extra map[string]any `json:"-"`
}

func (e *Error) Error() string { return e.ErrCode + ": " + e.Message }

// Errorf builds an Error.
func Errorf(status int, errcode, format string, args ...any) *Error {
	return &Error{Status: status, ErrCode: errcode, Message: fmt.Sprintf(format, args...)}
}

// The errcodes Myelin uses, with their usual HTTP statuses.
func Forbidden(msg string) *Error { return Errorf(http.StatusForbidden, "M_FORBIDDEN", "%s", msg) }
func NotFound(msg string) *Error  { return Errorf(http.StatusNotFound, "M_NOT_FOUND", "%s", msg) }
func NotJSON(msg string) *Error   { return Errorf(http.StatusBadRequest, "M_NOT_JSON", "%s", msg) }
func BadJSON(msg string) *Error   { return Errorf(http.StatusBadRequest, "M_BAD_JSON", "%s", msg) }
func MissingParam(msg string) *Error {
	return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "%s", msg)
}
func InvalidParam(msg string) *Error {
	return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "%s", msg)
}
func Unrecognized(msg string) *Error { return Errorf(http.StatusNotFound, "M_UNRECOGNIZED", "%s", msg) }
func UnknownToken(msg string) *Error {
	return Errorf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "%s", msg)
}
func MissingToken(msg string) *Error {
	return Errorf(http.StatusUnauthorized, "M_MISSING_TOKEN", "%s", msg)
}
func Unknown(msg string) *Error {
	return Errorf(http.StatusInternalServerError, "M_UNKNOWN", "%s", msg)
}

// Unavailable is 503 M_UNKNOWN: the server cannot answer now (its database
// or a peer service is down) and the client should retry; WriteError adds
// Retry-After. The spec has no errcode for it, and asks clients that get
// M_UNKNOWN to go by the HTTP status.
func Unavailable(msg string) *Error {
	return Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "%s", msg)
}

// UnavailableRetryAfter is the Retry-After of 503 answers that set none.
const UnavailableRetryAfter = 5 * time.Second

func UserInUse(msg string) *Error { return Errorf(http.StatusBadRequest, "M_USER_IN_USE", "%s", msg) }
func InvalidUsername(msg string) *Error {
	return Errorf(http.StatusBadRequest, "M_INVALID_USERNAME", "%s", msg)
}

// LimitExceeded is M_LIMIT_EXCEEDED with retry_after_ms.
func LimitExceeded(retryAfterMS int64) *Error {
	e := Errorf(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many requests")
	e.RetryAfterMS = retryAfterMS
	return e
}

// WriteJSON writes v as a JSON response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"response encoding failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// WriteError writes err as a Matrix error. Anything that is not an *Error
// is a failure of the server: 503 M_UNKNOWN when the database or a peer
// service is unavailable (IsUnavailable), otherwise an internal error (500
// M_UNKNOWN); the caller logs it. Every 503 carries Retry-After.
func WriteError(w http.ResponseWriter, err error) {
	var me *Error
	if !errors.As(err, &me) {
		if IsUnavailable(err) {
			me = Unavailable("Service temporarily unavailable, try again later")
		} else {
			me = Unknown("Internal server error")
		}
	}
	body := map[string]any{"errcode": me.ErrCode, "error": me.Message}
	if me.RetryAfterMS > 0 {
		body["retry_after_ms"] = me.RetryAfterMS
		w.Header().Set("Retry-After", strconv.FormatInt((me.RetryAfterMS+999)/1000, 10))
	} else if me.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(int(UnavailableRetryAfter/time.Second)))
	}
	for k, v := range me.Extra {
		body[k] = v
	}
	WriteJSON(w, me.Status, body)
}

// IsUnavailable reports whether err says that a dependency cannot serve
// right now, so that the request may succeed later: the database is
// unreachable or refusing work (pgstore.IsUnavailable), or a peer service
// answered gRPC Unavailable.
func IsUnavailable(err error) bool {
	if pgstore.IsUnavailable(err) {
		return true
	}
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable
}

// CORS adds the headers the spec requires on every client-server response
// and answers OPTIONS preflights.
func CORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// NotFoundHandler answers unknown paths with M_UNRECOGNIZED (404) and
// unknown methods with M_UNRECOGNIZED (405), as the spec asks.
// Recover turns a panic in a handler into a logged 500 M_UNKNOWN answer
// instead of a dropped connection. http.ErrAbortHandler (a deliberate
// abort, e.g. by a reverse proxy) is passed on.
func Recover(log *zap.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("panic in HTTP handler", zap.String("method", r.Method), zap.String("path", r.URL.Path),
					zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
				WriteError(w, Unknown("Internal server error"))
			}()
			next.ServeHTTP(w, r)
		})
	}
}

func NotFoundHandler(w http.ResponseWriter, _ *http.Request) {
	WriteError(w, Unrecognized("Unrecognized request"))
}

// MethodNotAllowedHandler answers a known path with the wrong method.
func MethodNotAllowedHandler(w http.ResponseWriter, _ *http.Request) {
	WriteError(w, Errorf(http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Method not allowed"))
}
