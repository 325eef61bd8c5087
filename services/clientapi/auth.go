package clientapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// accessTokenPrefix starts every access token Myelin issues.
const accessTokenPrefix = "myl_"

// uiaSessionMaxAge is how long a user-interactive auth session stays valid.
const uiaSessionMaxAge = time.Hour

// authDummy is the only UIA stage Myelin offers.
const authDummy = "m.login.dummy"

// device is the authenticated caller of a request.
type device struct {
	UserID    string
	DeviceID  string
	tokenHash []byte
}

// newAccessToken returns a random access token and the SHA-256 hash that
// is stored in its place.
func newAccessToken() (token string, hash []byte) {
	token = accessTokenPrefix + randomBase64(32)
	return token, hashToken(token)
}

func hashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

func randomBase64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

// randomFrom returns n characters drawn uniformly from alphabet.
func randomFrom(alphabet string, n int) string {
	out := make([]byte, n)
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	for i := range out {
		// Rejection-free: alphabets are short, the bias of byte%len is
		// irrelevant for device IDs and generated localparts.
		out[i] = alphabet[int(buf[i])%len(alphabet)]
	}
	return string(out)
}

func newDeviceID() string { return randomFrom("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10) }

// requestToken extracts the access token from the Authorization header
// or the access_token query parameter.
func requestToken(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			return "", false
		}
		return strings.TrimSpace(token), true
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

// authenticate resolves the request's access token to a device.
func (s *Service) authenticate(r *http.Request) (*device, error) {
	token, ok := requestToken(r)
	if !ok {
		return nil, matrixhttp.MissingToken("Missing access token")
	}
	hash := hashToken(token)
	userID, deviceID, err := s.store.LookupToken(r.Context(), hash)
	if errors.Is(err, store.ErrNotFound) {
		e := matrixhttp.UnknownToken("Unrecognised access token")
		e.Extra = map[string]any{"soft_logout": false}
		return nil, e
	}
	if err != nil {
		return nil, err
	}
	return &device{UserID: userID, DeviceID: deviceID, tokenHash: hash}, nil
}

// authData is the "auth" object of a UIA request.
type authData struct {
	Type    string `json:"type"`
	Session string `json:"session"`
}

// uiaChallenge is the 401 response that asks for (more) authentication.
// With an errcode it also says why the last attempt failed.
type uiaChallenge struct {
	Session   string
	Completed []string
	ErrCode   string
	Message   string
}

func (c *uiaChallenge) Error() string { return "user-interactive auth required: " + c.ErrCode }

func (c *uiaChallenge) body() map[string]any {
	b := map[string]any{
		"flows":   []map[string]any{{"stages": []string{authDummy}}},
		"params":  map[string]any{},
		"session": c.Session,
	}
	if len(c.Completed) > 0 {
		b["completed"] = c.Completed
	}
	if c.ErrCode != "" {
		b["errcode"], b["error"] = c.ErrCode, c.Message
	}
	return b
}

// checkUIA runs user-interactive auth for one request. It returns nil when
// the request may proceed; otherwise the 401 (or other) error to send. A
// request without auth gets a new session; m.login.dummy completes the
// only flow, with the session the server gave or (as Synapse allows)
// without one.
func (s *Service) checkUIA(ctx context.Context, auth *authData) error {
	if auth == nil {
		session := randomBase64(18)
		if err := s.store.CreateUIASession(ctx, session, uiaSessionMaxAge); err != nil {
			return err
		}
		return &uiaChallenge{Session: session}
	}
	if auth.Session != "" {
		ok, err := s.store.UIASessionExists(ctx, auth.Session, uiaSessionMaxAge)
		if err != nil {
			return err
		}
		if !ok {
			return unknownError(http.StatusBadRequest, "Unknown or expired UIA session")
		}
	}
	if auth.Type != authDummy {
		return &uiaChallenge{Session: auth.Session, ErrCode: "M_UNRECOGNIZED", Message: "Unsupported authentication type"}
	}
	return nil
}

// finishUIA forgets a completed session.
func (s *Service) finishUIA(ctx context.Context, auth *authData) error {
	if auth == nil || auth.Session == "" {
		return nil
	}
	return s.store.DeleteUIASession(ctx, auth.Session)
}
