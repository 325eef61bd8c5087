package httpapi

import (
	"time"

	"github.com/myelin-chat/myelin/pkg/ratelimit"
)

// LimitClass names a rate-limited group of endpoints (a class of the
// shared limiter, pkg/ratelimit).
type LimitClass string

const (
	LimitNone       LimitClass = ""
	LimitRegister   LimitClass = "register"
	LimitLogin      LimitClass = "login"
	LimitSend       LimitClass = "send"
	LimitCreateRoom LimitClass = "create_room"
)

// NewRateLimiter is the client-API's limiter: one bucket per class and
// client (IP address or user ID).
func NewRateLimiter(cfg RateLimitConfig, now func() time.Time) *ratelimit.Limiter {
	return ratelimit.New(cfg.Enabled, map[string]ratelimit.Bucket{
		string(LimitRegister):   cfg.Register,
		string(LimitLogin):      cfg.Login,
		string(LimitSend):       cfg.Send,
		string(LimitCreateRoom): cfg.CreateRoom,
	}, now)
}

// RateLimitConfig configures the token-bucket rate limiter. Register and
// login are limited per client IP; send and createRoom per user.
type RateLimitConfig struct {
	Enabled    bool             `yaml:"enabled"`
	Register   ratelimit.Bucket `yaml:"register"`
	Login      ratelimit.Bucket `yaml:"login"`
	Send       ratelimit.Bucket `yaml:"send"`
	CreateRoom ratelimit.Bucket `yaml:"create_room"`
	// TrustForwardedFor takes the client IP from X-Forwarded-For (set it
	// when the client-API runs behind the edge router or another proxy).
	TrustForwardedFor bool `yaml:"trust_forwarded_for"`
}
