package clientapi

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/pkg/ratelimit"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
)

// Config is the client-API's own configuration (root key: client_api).
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxDatabaseConns caps the service's PostgreSQL pool.
	MaxDatabaseConns int32 `yaml:"max_database_conns"`
	// Registration: who may create accounts, guests, shared-secret
	// registration and token lifetimes (internal/users).
	Registration RegistrationConfig `yaml:"registration"`
	// PublicBaseURL is the URL clients reach the homeserver at, published
	// in /.well-known/matrix/client.
	PublicBaseURL string `yaml:"public_base_url"`
	// DefaultRoomVersion is used by /createRoom when the client names none.
	DefaultRoomVersion string `yaml:"default_room_version"`
	// RateLimit throttles expensive endpoints.
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// Sync holds /sync and /messages settings.
	Sync SyncConfig `yaml:"sync"`
	// ConsumerName is the durable JetStream consumer that feeds the
	// client-API's copy of room events.
	ConsumerName string `yaml:"consumer_name"`
	// ToDeviceInConsumerName is the durable JetStream consumer of
	// send-to-device messages from other servers (MYELIN_TO_DEVICE_IN).
	ToDeviceInConsumerName string `yaml:"to_device_in_consumer_name"`
	// Push configures notifications and HTTP pushers (internal/push, internal/pushgateway).
	Push PushConfig `yaml:"push"`
	// Turn configures GET /voip/turnServer (internal/users).
	Turn TurnConfig `yaml:"turn"`
	// Support is served at /.well-known/matrix/support (internal/users).
	Support SupportConfig `yaml:"support"`
}

// SupportConfig is the server's contact information for users
// (internal/users).
type SupportConfig = users.SupportConfig

// SupportContact is one admin contact (internal/users).
type SupportContact = users.SupportContact

// TurnConfig gives clients credentials for a TURN server (internal/users).
type TurnConfig = users.TurnConfig

// RegistrationConfig is client_api.registration (internal/users).
type RegistrationConfig = users.RegistrationConfig

// Registration modes (client_api.registration.mode).
const (
	RegistrationOpen   = users.RegistrationOpen
	RegistrationToken  = users.RegistrationToken
	RegistrationClosed = users.RegistrationClosed
)

// DefaultRegistrationConfig: open registration, no guests, no shared secret.
func DefaultRegistrationConfig() RegistrationConfig { return users.DefaultRegistrationConfig() }

// PushConfig configures the receipt copy that resets unread counts, the
// retention of notifications and the delivery of HTTP pushers
// (internal/push).
type PushConfig = push.Config

// RateLimitConfig configures the token-bucket rate limiter (the HTTP
// edge's, internal/httpapi).
type RateLimitConfig = httpapi.RateLimitConfig

// RateBucket is a token bucket: PerSecond tokens are added each second, up
// to Burst (the shared limiter's, pkg/ratelimit).
type RateBucket = ratelimit.Bucket

// SyncConfig holds /sync and /messages settings (internal/syncapi).
type SyncConfig = syncapi.Config

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxDatabaseConns:   16,
		Registration:       DefaultRegistrationConfig(),
		PublicBaseURL:      "http://localhost:8008",
		DefaultRoomVersion: string(gomatrixserverlib.RoomVersionV11),
		RateLimit: RateLimitConfig{
			Enabled:    true,
			Register:   RateBucket{PerSecond: 10, Burst: 100},
			Login:      RateBucket{PerSecond: 10, Burst: 100},
			Send:       RateBucket{PerSecond: 100, Burst: 1000},
			CreateRoom: RateBucket{PerSecond: 10, Burst: 100},
		},
		Sync: SyncConfig{
			DefaultTimelineLimit: 10,
			MaxTimelineLimit:     1000,
			MaxTimeout:           5 * time.Minute,
			LazyCacheDevices:     10000,
			LazyCacheMembers:     200000,
		},
		ConsumerName:           "clientapi-sync",
		ToDeviceInConsumerName: "clientapi-todevice-in",
		Push: PushConfig{
			ReceiptsConsumerName: "clientapi-push-receipts",
			InitialBackoff:       time.Second,
			MaxBackoff:           10 * time.Minute,
			MaxAttempts:          12,
			RequestTimeout:       30 * time.Second,
			// Synapse keeps push actions about a month too.
			NotificationRetention: 30 * 24 * time.Hour,
			PruneInterval:         time.Hour,
		},
		Turn: TurnConfig{UserLifetime: time.Hour},
	}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if len(c.Turn.URIs) > 0 && (c.Turn.SharedSecret == "" || c.Turn.UserLifetime <= 0) {
		errs = append(errs, errors.New("turn: uris need a shared_secret and a positive user_lifetime"))
	}
	for _, ct := range c.Support.Contacts {
		if ct.Role == "" || (ct.MatrixID == "" && ct.Email == "") {
			errs = append(errs, errors.New("support.contacts: each needs a role and a matrix_id or email_address"))
		}
	}
	if c.MaxDatabaseConns < 2 {
		errs = append(errs, errors.New("max_database_conns must be at least 2"))
	}
	if u, err := url.Parse(c.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("public_base_url must be an http(s) URL, got %q", c.PublicBaseURL))
	}
	if !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(c.DefaultRoomVersion)) {
		errs = append(errs, fmt.Errorf("default_room_version %q is not a stable room version", c.DefaultRoomVersion))
	}
	if c.RateLimit.Enabled {
		for name, b := range map[string]RateBucket{
			"register": c.RateLimit.Register, "login": c.RateLimit.Login,
			"send": c.RateLimit.Send, "create_room": c.RateLimit.CreateRoom,
		} {
			if !b.Valid() {
				errs = append(errs, fmt.Errorf("rate_limit.%s: per_second must be > 0 and burst >= 1", name))
			}
		}
	}
	errs = append(errs, c.Registration.Validate()...)
	if c.Sync.DefaultTimelineLimit < 1 || c.Sync.MaxTimelineLimit < c.Sync.DefaultTimelineLimit {
		errs = append(errs, errors.New("sync: need 1 <= default_timeline_limit <= max_timeline_limit"))
	}
	if c.Sync.MaxTimeout < time.Second {
		errs = append(errs, errors.New("sync.max_timeout must be at least 1s"))
	}
	if c.Sync.LazyCacheDevices < 1 || c.Sync.LazyCacheMembers < 1 {
		errs = append(errs, errors.New("sync.lazy_cache_devices and sync.lazy_cache_members must be at least 1"))
	}
	if c.ConsumerName == "" {
		errs = append(errs, errors.New("consumer_name must be set"))
	}
	if c.ToDeviceInConsumerName == "" {
		errs = append(errs, errors.New("to_device_in_consumer_name must be set"))
	}
	if c.Push.ReceiptsConsumerName == "" {
		errs = append(errs, errors.New("push.receipts_consumer_name must be set"))
	}
	if c.Push.InitialBackoff <= 0 || c.Push.MaxBackoff < c.Push.InitialBackoff || c.Push.MaxAttempts < 1 || c.Push.RequestTimeout <= 0 {
		errs = append(errs, errors.New("push: need 0 < initial_backoff <= max_backoff, max_attempts >= 1, request_timeout > 0"))
	}
	if c.Push.NotificationRetention < 0 || (c.Push.NotificationRetention > 0 && c.Push.PruneInterval <= 0) {
		errs = append(errs, errors.New("push: notification_retention must be >= 0 (0 keeps notifications), and prune_interval > 0 with it"))
	}
	return errors.Join(errs...)
}
