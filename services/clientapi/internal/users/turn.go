package users

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"time"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// turnServer is GET /voip/turnServer: time-limited TURN credentials in the
// TURN REST API form that coturn's use-auth-secret accepts (username
// "<expiry>:<user ID>", password base64(HMAC-SHA1(secret, username))), as
// Synapse issues them. Without turn.uris it answers {}.
func (s *Admin) turnServer(_ *http.Request, dev *httpapi.Device) (any, error) {
	cfg := s.cfg.Turn
	if len(cfg.URIs) == 0 || cfg.SharedSecret == "" {
		return struct{}{}, nil
	}
	expiry := s.now().Add(cfg.UserLifetime).Unix()
	username := strconv.FormatInt(expiry, 10) + ":" + dev.UserID
	mac := hmac.New(sha1.New, []byte(cfg.SharedSecret))
	mac.Write([]byte(username))
	return map[string]any{
		"username": username,
		"password": base64.StdEncoding.EncodeToString(mac.Sum(nil)),
		"uris":     cfg.URIs,
		"ttl":      int64(cfg.UserLifetime / time.Second),
	}, nil
}
