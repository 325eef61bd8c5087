package federation

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/matrix-org/util"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	mfed "maunium.net/go/mautrix/federation"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// DefaultMaxRequestBody bounds the body of an authenticated federation
// request (a transaction of 50 PDUs and 100 EDUs fits many times over).
const DefaultMaxRequestBody = 16 << 20

// Authenticator checks the X-Matrix authorization of inbound federation
// requests: gomatrixserverlib's fclient.VerifyHTTPRequest with a
// JSONVerifier (normally NewVerifier over the key-server), plus the
// destination rule (a destination that is not this server is refused with
// 401) and the spec's errors.
type Authenticator struct {
	serverName spec.ServerName
	keys       gomatrixserverlib.JSONVerifier
	log        *zap.Logger
	// quiet is the logrus logger gomatrixserverlib's verification logs to
	// (it would use logrus' global one): discarded, as the outcome is
	// logged here.
	quiet *logrus.Entry
	// MaxBody bounds request bodies (default DefaultMaxRequestBody).
	MaxBody int64
	// Now is the clock requests are checked at (default time.Now).
	Now func() time.Time
}

// NewAuthenticator checks requests addressed to serverName with keys.
func NewAuthenticator(serverName spec.ServerName, keys gomatrixserverlib.JSONVerifier, log *zap.Logger) *Authenticator {
	if log == nil {
		log = zap.NewNop()
	}
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	return &Authenticator{serverName: serverName, keys: keys, log: log, quiet: logrus.NewEntry(quiet), MaxBody: DefaultMaxRequestBody, Now: time.Now}
}

type requestKey struct{}

// Request returns the authenticated federation request (origin, method,
// URI, JSON content) that Middleware put in the context, or nil.
func Request(ctx context.Context) *fclient.FederationRequest {
	r, _ := ctx.Value(requestKey{}).(*fclient.FederationRequest)
	return r
}

// Origin is the authenticated origin server of the request in ctx, or "".
func Origin(ctx context.Context) spec.ServerName {
	if r := Request(ctx); r != nil {
		return r.Origin()
	}
	return ""
}

// Middleware (chi) lets through only requests with a valid X-Matrix
// signature; the handler finds the origin with Origin(r.Context()) and can
// read the body again.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fedReq, err := a.Authenticate(r)
		if err != nil {
			matrixhttp.WriteError(w, err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(fedReq.Content()))
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, fedReq)))
	})
}

// Authenticate checks r's X-Matrix authorization and returns the signed
// request. It consumes r.Body. The error is a *matrixhttp.Error: 401
// M_UNAUTHORIZED for a missing, malformed or wrongly addressed header or a
// signature that does not verify (unknown key, bad signature), 400
// M_NOT_JSON for a body that is not JSON, 413 M_TOO_LARGE.
func (a *Authenticator) Authenticate(r *http.Request) (*fclient.FederationRequest, error) {
	var auths []mfed.XMatrixAuth
	for _, h := range r.Header.Values("Authorization") {
		scheme, params, _ := strings.Cut(strings.TrimSpace(h), " ")
		if !strings.EqualFold(scheme, "X-Matrix") {
			continue
		}
		auth := mfed.ParseXMatrixAuth("X-Matrix " + strings.TrimSpace(params))
		if auth.Origin == "" || auth.KeyID == "" || auth.Signature == "" {
			return nil, unauthorized("Malformed X-Matrix authorization: origin, key and sig are required")
		}
		if auth.Destination != "" && spec.ServerName(auth.Destination) != a.serverName {
			return nil, unauthorized("The X-Matrix destination is not this server")
		}
		if len(auths) > 0 && auths[0].Origin != auth.Origin {
			return nil, unauthorized("X-Matrix authorizations of different origins")
		}
		auths = append(auths, auth)
	}
	if len(auths) == 0 {
		return nil, unauthorized("Missing Authorization: X-Matrix header")
	}
	// gomatrixserverlib reads the header in the form senders are asked
	// to use; hand it that form of what was parsed leniently above.
	r.Header.Del("Authorization")
	for _, auth := range auths {
		if auth.Destination == "" {
			auth.Destination = string(a.serverName)
		}
		r.Header.Add("Authorization", auth.String())
	}
	r.Body = http.MaxBytesReader(nil, r.Body, a.MaxBody)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, matrixhttp.Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body too large")
		}
		return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_BAD_JSON", "Could not read the request body")
	}
	if len(body) > 0 && r.Header.Get("Content-Type") == "" {
		// The spec does not require senders to label JSON bodies.
		r.Header.Set("Content-Type", "application/json")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r = r.WithContext(util.ContextWithLogger(r.Context(), a.quiet))
	fedReq, resp := fclient.VerifyHTTPRequest(r, a.Now(), a.serverName, nil, a.keys)
	switch {
	case fedReq != nil:
		return fedReq, nil
	case resp.Code == http.StatusUnauthorized:
		a.log.Debug("federation request refused", zap.String("origin", auths[0].Origin), zap.String("path", r.URL.Path), zap.Any("reason", resp.JSON))
		return nil, unauthorized("The X-Matrix signature does not verify with a key of the origin server")
	case resp.Code == http.StatusBadRequest:
		return nil, matrixhttp.Errorf(http.StatusBadRequest, "M_NOT_JSON", "The request body is not a JSON object or its origin is not a server name")
	default:
		a.log.Warn("federation request could not be authenticated", zap.Int("code", resp.Code), zap.Any("reason", resp.JSON))
		return nil, matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "Server keys are unavailable; try again later")
	}
}

func unauthorized(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusUnauthorized, "M_UNAUTHORIZED", "%s", msg)
}
