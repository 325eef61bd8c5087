// Package users is the client-API's users domain: accounts, registration
// and user-interactive auth, login, access and refresh tokens, devices,
// passwords, deactivation and erasure, account moderation, the admin
// registration and token APIs, profiles, guests, account data and tags,
// sync filters and ignore lists. Its parts are separate types over one
// set of dependencies (base): Accounts, Admin, Profiles and AccountData,
// and Queries, what other services ask about local users.
package users

import (
	"context"
	"net/http"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/appservice"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"

	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// Config is what the users domain takes of the client-API's settings.
type Config struct {
	Registration       RegistrationConfig
	PublicBaseURL      string
	DefaultRoomVersion string
	// RateLimit.TrustForwardedFor says where a login's IP comes from.
	RateLimit httpapi.RateLimitConfig
	Turn      TurnConfig
	Support   SupportConfig
}

// What the users domain needs of the rest of the client-API, declared
// here and wired by the client-API's root package.
type (
	// DeviceChanges sends queued device deletions and renames to the
	// key-server before a request answers (keys.Bridge).
	DeviceChanges interface {
		SendForRequest(ctx context.Context, userID string)
	}
	// Waker wakes a user's long polls on every replica (wakebus.Bus).
	Waker interface {
		AnnounceWake(userID string)
	}
	// PushRules gives a user's effective m.push_rules content (push.Service).
	PushRules interface {
		RulesContent(ctx context.Context, userID string) ([]byte, error)
	}
	// Erasures is the history readers' copy of the erased users
	// (history.Service), dropped after an erasure so that it applies at once.
	Erasures interface {
		ForgetErasures()
	}
	// AppserviceQueries asks the appservice whose namespace holds an
	// unknown user about it: asked means it answered that the user exists
	// (look again); a failure is the client's error.
	AppserviceQueries interface {
		QueryUser(ctx context.Context, userID string) (asked bool, err error)
	}
	// RoomMembers gives a room's joined users (notifier.Notifier).
	RoomMembers interface {
		Members(roomID string) []string
	}
)

// Deps are the users domain's dependencies.
type Deps struct {
	Config     Config
	ServerName string
	Store      *store.Store
	Rooms      roomserverv1.RoomServiceClient
	// Presence may be nil (no presence service).
	Presence presencev1.PresenceServiceClient
	Log      *zap.Logger
	// Now is the clock of token lifetimes.
	Now           func() time.Time
	DeviceChanges DeviceChanges
	Wake          Waker
	PushRules     PushRules
	Erasures      Erasures
	Members       RoomMembers
	// Federation asks other servers for their users' profiles; nil when
	// federation is off (remote profiles are then not found).
	Federation fedsenderv1.FederationSenderServiceClient
	// Appservices are the application service registrations (nil: none).
	Appservices *appservice.Set
	// AppserviceQueries asks appservices about unknown users in their
	// namespaces (internal/appservices).
	AppserviceQueries AppserviceQueries
}

// base holds what every part of the domain uses.
type base struct {
	cfg        Config
	log        *zap.Logger
	serverName string
	store      *store.Store
	accounts   *accounts.Store
	rooms      roomserverv1.RoomServiceClient
	presence   presencev1.PresenceServiceClient
	now        func() time.Time
	keys       DeviceChanges
	wakeBus    Waker
	push       PushRules
	history    Erasures
	notifier   RoomMembers
	fed        fedsenderv1.FederationSenderServiceClient
	// appservices: as_token logins and registrations, exclusive namespaces.
	appservices *appservice.Set
	asQueries   AppserviceQueries
}

// Service is the users domain.
type Service struct {
	Accounts *Accounts
	Admin    *Admin
	Profiles *Profiles
	Data     *AccountData
	// Queries answers other services (the gRPC UserService).
	Queries *Queries
}

// Accounts: registration, UIA, login, tokens, devices, passwords,
// deactivation, the fallback pages and the discovery endpoints.
type Accounts struct {
	*base
	profiles *Profiles
}

// Admin: the admin registration and token APIs, account moderation,
// whois, the support and TURN endpoints.
type Admin struct {
	*base
	// registrar creates the accounts of shared-secret registration.
	registrar *Accounts
}

// Profiles: display names and avatars, their propagation to rooms, the
// user directory, and guests' room access.
type Profiles struct {
	*base
}

// AccountData: account data, tags and filters.
type AccountData struct {
	*base
}

// New returns the users domain.
func New(d Deps) *Service {
	b := &base{
		cfg: d.Config, log: d.Log, serverName: d.ServerName, store: d.Store, accounts: accounts.New(d.Store), rooms: d.Rooms, presence: d.Presence,
		now: d.Now, keys: d.DeviceChanges, wakeBus: d.Wake, push: d.PushRules, history: d.Erasures, notifier: d.Members,
		fed:         d.Federation,
		appservices: d.Appservices, asQueries: d.AppserviceQueries,
	}
	p := &Profiles{base: b}
	a := &Accounts{base: b, profiles: p}
	return &Service{Accounts: a, Admin: &Admin{base: b, registrar: a}, Profiles: p, Data: &AccountData{base: b}, Queries: &Queries{base: b}}
}

// Routes are the users endpoints.
func (s *Service) Routes() []httpapi.Route {
	return slices.Concat(s.Accounts.routes(), s.Admin.routes(), s.Profiles.routes(), s.Data.routes())
}

// fromGRPC converts a peer service's error into a Matrix error
// (httpapi.FromGRPC).
func (s *base) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}

// presenceClient returns the presence service, or unavailability when the
// process was built without one.
func (s *base) presenceClient() (presencev1.PresenceServiceClient, error) {
	if s.presence == nil {
		return nil, httpapi.UnknownError(http.StatusServiceUnavailable, "Presence service not configured")
	}
	return s.presence, nil
}
