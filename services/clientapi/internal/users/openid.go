package users

import (
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// openIDTokenPrefix starts every OpenID token Myelin issues.
const openIDTokenPrefix = "myo_"

// openIDToken is the body of POST /user/{userId}/openid/request_token.
type openIDToken struct {
	AccessToken      string `json:"access_token"`
	TokenType        string `json:"token_type"`
	MatrixServerName string `json:"matrix_server_name"`
	ExpiresIn        int64  `json:"expires_in"`
}

// requestOpenIDToken is POST /user/{userId}/openid/request_token: a token
// that the user may hand to another service, which exchanges it for the
// user's ID over federation's /openid/userinfo (ValidateOpenIDToken). It
// is good for nothing else and lasts registration.openid_token_lifetime.
// The body is an empty object reserved for later use; a missing body is
// taken as one (mautrix-go sends none).
func (s *Accounts) requestOpenIDToken(r *http.Request, dev *httpapi.Device) (any, error) {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	if userID != dev.UserID {
		return nil, matrixhttp.Forbidden("Cannot request OpenID tokens for other users")
	}
	if _, err := httpapi.ReadObject(r, httpapi.BodyOptional); err != nil {
		return nil, err
	}
	token := openIDTokenPrefix + randomBase64(32)
	lifetime := s.cfg.Registration.OpenIDTokenLifetime
	if err := s.accounts.CreateOpenIDToken(r.Context(), hashToken(token), dev.UserID, s.now().Add(lifetime)); err != nil {
		return nil, err
	}
	return openIDToken{AccessToken: token, TokenType: "Bearer", MatrixServerName: s.serverName, ExpiresIn: int64(lifetime.Seconds())}, nil
}
