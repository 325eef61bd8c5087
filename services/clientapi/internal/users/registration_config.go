package users

import (
	"errors"
	"fmt"
	"time"
)

// Registration modes (client_api.registration.mode).
const (
	// RegistrationOpen: anyone may register (UIA m.login.dummy).
	RegistrationOpen = "open"
	// RegistrationToken: registering needs a registration token
	// (UIA m.login.registration_token), created through the admin API.
	RegistrationToken = "token"
	// RegistrationClosed: POST /register is refused; accounts are created
	// by operators with shared-secret registration.
	RegistrationClosed = "closed"
)

// RegistrationConfig is client_api.registration.
type RegistrationConfig struct {
	// Mode is open, token or closed.
	Mode string `yaml:"mode"`
	// GuestAccess allows POST /register?kind=guest.
	GuestAccess bool `yaml:"guest_access"`
	// SharedSecret enables /_synapse/admin/v1/register (the HMAC key);
	// empty disables it.
	SharedSecret string `yaml:"shared_secret"`
	// NonceLifetime is how long a shared-secret registration nonce stays usable.
	NonceLifetime time.Duration `yaml:"nonce_lifetime"`
	// AccessTokenLifetime is the lifetime of access tokens issued with a
	// refresh token (clients that ask for refresh_token: true). Tokens of
	// clients that do not ask never expire.
	AccessTokenLifetime time.Duration `yaml:"access_token_lifetime"`
	// LoginTokenLifetime is the lifetime of m.login.token tokens from
	// POST /login/get_token.
	LoginTokenLifetime time.Duration `yaml:"login_token_lifetime"`
	// OpenIDTokenLifetime is the lifetime of OpenID tokens from
	// POST /user/{userId}/openid/request_token.
	OpenIDTokenLifetime time.Duration `yaml:"openid_token_lifetime"`
}

// DefaultRegistrationConfig: open registration, no guests, no shared secret.
func DefaultRegistrationConfig() RegistrationConfig {
	return RegistrationConfig{
		Mode:                RegistrationOpen,
		NonceLifetime:       time.Minute,
		AccessTokenLifetime: 5 * time.Minute,
		LoginTokenLifetime:  2 * time.Minute,
		OpenIDTokenLifetime: time.Hour,
	}
}

// Validate checks the settings, returning every problem.
func (c RegistrationConfig) Validate() []error {
	var errs []error
	switch c.Mode {
	case RegistrationOpen, RegistrationToken, RegistrationClosed:
	default:
		errs = append(errs, fmt.Errorf("registration.mode must be open, token or closed, got %q", c.Mode))
	}
	if c.NonceLifetime < time.Second || c.AccessTokenLifetime < time.Second || c.LoginTokenLifetime < time.Second || c.OpenIDTokenLifetime < time.Second {
		errs = append(errs, errors.New("registration: nonce_lifetime, access_token_lifetime, login_token_lifetime and openid_token_lifetime must be at least 1s"))
	}
	return errs
}
