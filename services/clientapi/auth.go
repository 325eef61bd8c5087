package clientapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// accessTokenPrefix starts every access token Myelin issues.
const accessTokenPrefix = "myl_"

// device is the authenticated caller of a request.
type device struct {
	UserID    string
	DeviceID  string
	IsAdmin   bool
	IsGuest   bool
	Locked    bool
	Suspended bool
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
	dev, expired, err := s.lookupAccessToken(r.Context(), token)
	if errors.Is(err, store.ErrNotFound) {
		e := matrixhttp.UnknownToken("Unrecognised access token")
		e.Extra = map[string]any{"soft_logout": false}
		return nil, e
	}
	if err != nil {
		return nil, err
	}
	if expired {
		// The device still exists: the client refreshes (or logs in
		// again to the same device) rather than starting over.
		e := matrixhttp.UnknownToken("Access token has expired")
		e.Extra = map[string]any{"soft_logout": true}
		return nil, e
	}
	return dev, nil
}

// lookupAccessToken resolves an access token to its device (store.ErrNotFound
// if it is unknown), and says whether its lifetime is over. The HTTP
// handlers and the UserService's Authenticate (handler.go) share it.
func (s *Service) lookupAccessToken(ctx context.Context, token string) (dev *device, expired bool, err error) {
	hash := hashToken(token)
	owner, err := s.store.LookupToken(ctx, hash)
	if err != nil {
		return nil, false, err
	}
	expired = !owner.ExpiresAt.IsZero() && !s.now().Before(owner.ExpiresAt)
	return &device{UserID: owner.UserID, DeviceID: owner.DeviceID, IsAdmin: owner.Admin, IsGuest: owner.Guest,
		Locked: owner.Locked, Suspended: owner.Suspended, tokenHash: hash}, expired, nil
}
