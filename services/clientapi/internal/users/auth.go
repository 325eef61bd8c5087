package users

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// accessTokenPrefix starts every access token Myelin issues.
const accessTokenPrefix = "myl_"

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

// LookupAccessToken resolves an access token to its device
// (httpapi.ErrUnknownToken if it is unknown), and says whether its lifetime is over. The HTTP
// handlers and the UserService's Authenticate (handler.go) share it.
func (s *Accounts) LookupAccessToken(ctx context.Context, token string) (dev *httpapi.Device, expired bool, err error) {
	hash := hashToken(token)
	owner, err := s.accounts.LookupToken(ctx, hash)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, false, httpapi.ErrUnknownToken
		}
		return nil, false, err
	}
	expired = !owner.ExpiresAt.IsZero() && !s.now().Before(owner.ExpiresAt)
	return &httpapi.Device{UserID: owner.UserID, DeviceID: owner.DeviceID, IsAdmin: owner.Admin, IsGuest: owner.Guest,
		Locked: owner.Locked, Suspended: owner.Suspended, TokenHash: hash}, expired, nil
}
