package clientapi

import (
	"time"

	"github.com/myelin-chat/myelin/pkg/ratelimit"
)

// limitClass names a rate-limited group of endpoints (a class of the
// shared limiter, pkg/ratelimit).
type limitClass string

const (
	limitNone       limitClass = ""
	limitRegister   limitClass = "register"
	limitLogin      limitClass = "login"
	limitSend       limitClass = "send"
	limitCreateRoom limitClass = "create_room"
)

// newRateLimiter is the client-API's limiter: one bucket per class and
// client (IP address or user ID).
func newRateLimiter(cfg RateLimitConfig, now func() time.Time) *ratelimit.Limiter {
	return ratelimit.New(cfg.Enabled, map[string]ratelimit.Bucket{
		string(limitRegister):   cfg.Register,
		string(limitLogin):      cfg.Login,
		string(limitSend):       cfg.Send,
		string(limitCreateRoom): cfg.CreateRoom,
	}, now)
}
