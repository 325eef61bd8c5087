// Package push is the client-API's push domain: users' push rules (the
// spec's defaults merged with the stored m.push_rules, the /pushrules API),
// their evaluation for every stored event (Evaluate, called by the room
// event consumer inside the transaction that stores the event), the
// pushers API and GET /notifications. Delivery to push gateways is
// internal/pushgateway's.
package push

import (
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Config configures the receipt copy that resets unread counts and
// the delivery of HTTP pushers.
type Config struct {
	// ReceiptsConsumerName is the durable JetStream consumer of the
	// presence service's receipt changes (resets unread counts).
	ReceiptsConsumerName string `yaml:"receipts_consumer_name"`
	// InitialBackoff is the wait after a failed push gateway request; it
	// doubles after each further failure, up to MaxBackoff.
	InitialBackoff time.Duration `yaml:"initial_backoff"`
	MaxBackoff     time.Duration `yaml:"max_backoff"`
	// MaxAttempts bounds the requests for one notification; after the
	// last failure the pusher skips it.
	MaxAttempts int `yaml:"max_attempts"`
	// RequestTimeout bounds one push gateway request.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// NotificationRetention is how long a notification is kept (GET
	// /notifications, pushers that are behind), by its event's
	// origin_server_ts; 0 keeps them forever. Unread counts are kept
	// apart and do not shrink when old notifications go.
	NotificationRetention time.Duration `yaml:"notification_retention"`
	// PruneInterval is how often the consumer-lock holder deletes
	// notifications past the retention.
	PruneInterval time.Duration `yaml:"prune_interval"`
}

// Waker wakes a user's long polls on every replica (wakebus.Bus).
type Waker interface {
	AnnounceWake(userID string)
}

// Service is the push domain.
type Service struct {
	cfg        Config
	log        *zap.Logger
	serverName string
	store      *store.Store
	// history renders the notified events (GET /notifications).
	history *history.Service
	wake    Waker
	// pushRules caches users' effective push rules (eval.go).
	pushRules ruleCache
	// powers caches senders' power levels for push evaluation
	// (eval.go); the room event consumer's goroutine only.
	powers powerCache
	// now is the clock of the notification retention.
	now func() time.Time
}

// New returns the push domain of the users of serverName.
func New(cfg Config, serverName string, st *store.Store, hist *history.Service, wake Waker, log *zap.Logger) *Service {
	return &Service{cfg: cfg, log: log, serverName: serverName, store: st, history: hist, wake: wake, now: time.Now}
}

// Routes are the push endpoints: push rules, pushers, notifications.
func (s *Service) Routes() []httpapi.Route {
	return append(s.pushRuleRoutes(),
		httpapi.Route{Method: http.MethodGet, Path: "/pushers", Auth: true, Serve: s.getPushers},
		httpapi.Route{Method: http.MethodPost, Path: "/pushers/set", Auth: true, Serve: s.setPusher},
		httpapi.Route{Method: http.MethodGet, Path: "/notifications", Auth: true, Serve: s.notifications},
	)
}
