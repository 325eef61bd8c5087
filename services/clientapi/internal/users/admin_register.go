package users

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// Shared-secret registration, wire-compatible with Synapse's
// /_synapse/admin/v1/register so that register_new_matrix_user and other
// ops tooling work unchanged: GET hands out a nonce; POST registers when
// mac = hex(HMAC-SHA1(secret, nonce\0username\0password\0admin|notadmin)).
// Each nonce is good for one attempt (it is spent even when the MAC is
// wrong) and expires after registration.nonce_lifetime.

// adminRegisterNonce is GET /_synapse/admin/v1/register.
func (s *Admin) adminRegisterNonce(r *http.Request, _ *httpapi.Device) (any, error) {
	if s.cfg.Registration.SharedSecret == "" {
		return nil, sharedSecretDisabled()
	}
	nonce := randomBase64(24)
	if err := s.accounts.CreateNonce(r.Context(), nonce, s.cfg.Registration.NonceLifetime); err != nil {
		return nil, err
	}
	return map[string]string{"nonce": nonce}, nil
}

func sharedSecretDisabled() *matrixhttp.Error {
	return httpapi.UnknownError(http.StatusBadRequest, "Shared secret registration is not enabled")
}

// adminRegisterRequest is the POST body. Fields are pointers to tell
// missing from empty, as Synapse checks their types.
type adminRegisterRequest struct {
	Nonce       *string `json:"nonce"`
	Username    *string `json:"username"`
	Password    *string `json:"password"`
	Admin       bool    `json:"admin"`
	UserType    *string `json:"user_type"`
	DisplayName *string `json:"displayname"`
	MAC         *string `json:"mac"`
}

// registrationMAC computes the MAC the client must send.
func registrationMAC(secret, nonce, username, password string, admin bool, userType *string) []byte {
	m := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if admin {
		role = "admin"
	}
	parts := []string{nonce, username, password, role}
	if userType != nil {
		parts = append(parts, *userType)
	}
	m.Write([]byte(strings.Join(parts, "\x00")))
	return m.Sum(nil)
}

// adminRegister is POST /_synapse/admin/v1/register.
func (s *Admin) adminRegister(r *http.Request, _ *httpapi.Device) (any, error) {
	secret := s.cfg.Registration.SharedSecret
	if secret == "" {
		return nil, sharedSecretDisabled()
	}
	var req adminRegisterRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	if req.Nonce == nil {
		return nil, httpapi.UnknownError(http.StatusBadRequest, "nonce must be specified")
	}
	ok, err := s.accounts.ConsumeNonce(ctx, *req.Nonce, s.cfg.Registration.NonceLifetime)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, httpapi.UnknownError(http.StatusBadRequest, "unrecognised nonce")
	}
	if req.Username == nil || *req.Username == "" || len(*req.Username) > 512 || strings.ContainsRune(*req.Username, 0) {
		return nil, matrixhttp.InvalidParam("Invalid username")
	}
	if req.Password == nil || *req.Password == "" || len(*req.Password) > maxPasswordBytes || strings.ContainsRune(*req.Password, 0) {
		return nil, matrixhttp.InvalidParam("Invalid password")
	}
	if req.UserType != nil {
		// Synapse's user types (support, bot) carry no meaning here.
		return nil, matrixhttp.InvalidParam("user_type is not supported")
	}
	if req.MAC == nil {
		return nil, httpapi.UnknownError(http.StatusBadRequest, "mac must be specified")
	}
	got, err := hex.DecodeString(*req.MAC)
	want := registrationMAC(secret, *req.Nonce, *req.Username, *req.Password, req.Admin, req.UserType)
	if err != nil || !hmac.Equal(got, want) {
		return nil, matrixhttp.Forbidden("HMAC incorrect")
	}
	lp, err := s.registrar.normaliseUsername(*req.Username)
	if err != nil {
		return nil, err
	}
	hash, err := hashPassword(*req.Password)
	if err != nil {
		return nil, err
	}
	acct := accounts.NewAccount{Localpart: lp, PasswordHash: &hash, Admin: req.Admin}
	if req.DisplayName != nil {
		acct.DisplayName = *req.DisplayName
	} else {
		acct.DisplayName = lp
	}
	return s.registrar.createAndLogin(r, acct, true, "", "", false)
}
