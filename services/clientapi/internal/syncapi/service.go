// Package syncapi serves /sync and what is built on it: the read model's
// queries for a sync response (from one database snapshot), filters
// applied to the response, lazy-loaded members, to-device messages, the
// ephemeral, account data, unread count and end-to-end key parts, the
// long poll (on the notifier, subpackage notifier), and the deprecated
// /initialSync and /events. Its surface is New and Routes.
package syncapi

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"go.uber.org/zap"

	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/keys"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Config holds /sync and /messages settings.
type Config struct {
	// DefaultTimelineLimit is the timeline size when the filter sets none.
	DefaultTimelineLimit int `yaml:"default_timeline_limit"`
	// MaxTimelineLimit caps the filter's timeline limit.
	MaxTimelineLimit int `yaml:"max_timeline_limit"`
	// MaxTimeout caps the long-poll timeout a client asks for.
	MaxTimeout time.Duration `yaml:"max_timeout"`
	// LazyCacheDevices and LazyCacheMembers bound the memory of which
	// member events each device was sent (lazy-loading members, lazy.go):
	// devices, and members remembered in all.
	LazyCacheDevices int `yaml:"lazy_cache_devices"`
	LazyCacheMembers int `yaml:"lazy_cache_members"`
}

// Waker wakes a user's long polls on every replica (wakebus.Bus).
type Waker interface {
	AnnounceWake(userID string)
}

// RemoteToDevice hands send-to-device messages for users of other servers
// (server → user → device → content) to the federation sender
// (todeviceout.Publisher).
type RemoteToDevice interface {
	Publish(ctx context.Context, sender, deviceID, txnID, evType string, remote map[string]map[string]map[string]json.RawMessage) error
}

// AppserviceToDevice hands the messages for users an application service
// takes to-device messages for to the appservice service
// (astodevice.Publisher); key names the send.
type AppserviceToDevice interface {
	Publish(ctx context.Context, key string, msgs []store.ToDeviceMessage) error
}

// Deps are what sync reads from and waits on.
type Deps struct {
	Config     Config
	ServerName string
	Store      *store.Store
	Rooms      roomserverv1.RoomServiceClient
	// Presence may be nil: /sync then has no ephemeral data.
	Presence presencev1.PresenceServiceClient
	History  *history.Service
	Push     *push.Service
	Keys     *keys.Bridge
	Notifier *notifier.Notifier
	Wake     Waker
	// ToDeviceOut takes messages for users of other servers.
	ToDeviceOut RemoteToDevice
	// AppserviceToDevice takes messages for appservices' users (nil:
	// none).
	AppserviceToDevice AppserviceToDevice
	Log                *zap.Logger
}

// Service serves /sync, /sendToDevice and the legacy sync endpoints.
type Service struct {
	cfg        Config
	log        *zap.Logger
	serverName string
	store      *store.Store
	rooms      roomserverv1.RoomServiceClient
	presence   presencev1.PresenceServiceClient
	history    *history.Service
	push       *push.Service
	keys       *keys.Bridge
	notifier   *notifier.Notifier
	wakeBus    Waker
	// toDeviceOut takes send-to-device messages for remote users.
	toDeviceOut RemoteToDevice
	// asToDevice takes messages for appservices' users (nil: none).
	asToDevice AppserviceToDevice
	// lazy remembers the members /sync sent each device (lazy.go).
	lazy *lazyCache
}

// New returns the sync endpoints.
func New(d Deps) *Service {
	return &Service{
		cfg: d.Config, log: d.Log, serverName: d.ServerName, store: d.Store, rooms: d.Rooms, presence: d.Presence,
		history: d.History, push: d.Push, keys: d.Keys, notifier: d.Notifier, wakeBus: d.Wake, toDeviceOut: d.ToDeviceOut,
		asToDevice: d.AppserviceToDevice,
		lazy:       newLazyCache(d.Config.LazyCacheDevices, d.Config.LazyCacheMembers),
	}
}

// Routes are the sync endpoints.
func (s *Service) Routes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodGet, Path: "/sync", Auth: true, Serve: s.sync},
		{Method: http.MethodPut, Path: "/sendToDevice/{eventType}/{txnId}", Auth: true, Serve: s.sendToDevice},

		// Legacy sync (deprecated; see legacy.go).
		{Method: http.MethodGet, Path: "/initialSync", Auth: true, Serve: s.initialSync},
		{Method: http.MethodGet, Path: "/rooms/{roomId}/initialSync", Auth: true, Serve: s.roomInitialSync},
		{Method: http.MethodGet, Path: "/events", Auth: true, Serve: s.events},
		{Method: http.MethodGet, Path: "/events/{eventId}", Auth: true, Serve: s.getEventByID},
	}
}

// fromGRPC converts a peer service's error into a Matrix error
// (httpapi.FromGRPC).
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}
