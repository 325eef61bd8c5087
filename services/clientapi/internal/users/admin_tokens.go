package users

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// The registration-token admin API, shaped like Synapse's
// /_synapse/admin/v1/registration_tokens so existing tooling works. Only
// admins (accounts with the admin flag) may call it.

// registrationTokenAlphabet is the alphabet of generated tokens (the
// opaque identifier grammar minus nothing: [A-Za-z0-9._~-]).
const registrationTokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

func validOpaqueID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '_', c == '~', c == '-':
		default:
			return false
		}
	}
	return true
}

// listRegistrationTokens is GET /_synapse/admin/v1/registration_tokens.
func (s *Admin) listRegistrationTokens(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	var valid *bool
	switch r.URL.Query().Get("valid") {
	case "":
	case "true":
		v := true
		valid = &v
	case "false":
		v := false
		valid = &v
	default:
		return nil, matrixhttp.InvalidParam("valid must be true or false")
	}
	toks, err := s.accounts.RegistrationTokens(r.Context(), valid, s.now().UnixMilli())
	if err != nil {
		return nil, err
	}
	return map[string]any{"registration_tokens": toks}, nil
}

func tokenParam(r *http.Request) (string, error) {
	t, err := httpapi.PathParam(r, "token")
	if err != nil {
		return "", err
	}
	if !validOpaqueID(t) {
		return "", matrixhttp.NotFound("No such registration token")
	}
	return t, nil
}

// getRegistrationToken is GET /_synapse/admin/v1/registration_tokens/{token}.
func (s *Admin) getRegistrationToken(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	token, err := tokenParam(r)
	if err != nil {
		return nil, err
	}
	t, err := s.accounts.RegistrationToken(r.Context(), token)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such registration token")
	}
	return t, err
}

// tokenLimits reads uses_allowed and expiry_time from a body: whether each
// is present, and its value (null clears the limit).
func (s *Admin) tokenLimits(fields map[string]json.RawMessage) (setUses bool, uses *int, setExpiry bool, expiry *int64, err error) {
	if raw, ok := fields["uses_allowed"]; ok {
		setUses = true
		if err := json.Unmarshal(raw, &uses); err != nil || (uses != nil && *uses < 0) {
			return false, nil, false, nil, matrixhttp.InvalidParam("uses_allowed must be a non-negative integer or null")
		}
	}
	if raw, ok := fields["expiry_time"]; ok {
		setExpiry = true
		if err := json.Unmarshal(raw, &expiry); err != nil {
			return false, nil, false, nil, matrixhttp.InvalidParam("expiry_time must be an integer or null")
		}
		if expiry != nil && *expiry < s.now().UnixMilli() {
			return false, nil, false, nil, matrixhttp.InvalidParam("expiry_time must not be in the past")
		}
	}
	return setUses, uses, setExpiry, expiry, nil
}

// createRegistrationToken is POST /_synapse/admin/v1/registration_tokens/new.
func (s *Admin) createRegistrationToken(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &fields); err != nil {
		return nil, err
	}
	_, uses, _, expiry, err := s.tokenLimits(fields)
	if err != nil {
		return nil, err
	}
	t := accounts.RegistrationToken{UsesAllowed: uses, ExpiryTime: expiry}
	if raw, ok := fields["token"]; ok {
		if err := json.Unmarshal(raw, &t.Token); err != nil || !validOpaqueID(t.Token) {
			return nil, matrixhttp.InvalidParam("token must be 1-64 characters from A-Z, a-z, 0-9, '.', '_', '~', '-'")
		}
	} else {
		length := 16
		if raw, ok := fields["length"]; ok {
			if err := json.Unmarshal(raw, &length); err != nil || length < 1 || length > 64 {
				return nil, matrixhttp.InvalidParam("length must be an integer between 1 and 64")
			}
		}
		t.Token = randomFrom(registrationTokenAlphabet, length)
	}
	out, err := s.accounts.CreateRegistrationToken(r.Context(), t)
	if errors.Is(err, accounts.ErrExists) {
		return nil, matrixhttp.InvalidParam("Token already exists")
	}
	return out, err
}

// updateRegistrationToken is PUT /_synapse/admin/v1/registration_tokens/{token}.
func (s *Admin) updateRegistrationToken(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	token, err := tokenParam(r)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &fields); err != nil {
		return nil, err
	}
	setUses, uses, setExpiry, expiry, err := s.tokenLimits(fields)
	if err != nil {
		return nil, err
	}
	out, err := s.accounts.UpdateRegistrationToken(r.Context(), token, setUses, uses, setExpiry, expiry)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such registration token")
	}
	return out, err
}

// deleteRegistrationToken is DELETE /_synapse/admin/v1/registration_tokens/{token}.
func (s *Admin) deleteRegistrationToken(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := httpapi.RequireAdmin(dev); err != nil {
		return nil, err
	}
	token, err := tokenParam(r)
	if err != nil {
		return nil, err
	}
	err = s.accounts.DeleteRegistrationToken(r.Context(), token)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such registration token")
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
