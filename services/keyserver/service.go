// Package keyserver owns the homeserver's ed25519 signing key. It creates
// and persists the key, signs JSON for the other services over gRPC (so no
// other service holds the private key), and publishes the public keys at
// GET /_matrix/key/v2/server.
package keyserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// ErrNotJSONObject is returned when asked to sign something that is not a
// JSON object.
var ErrNotJSONObject = errors.New("not a JSON object")

// Deps are what the key-server needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
}

// Service is a running key-server.
type Service struct {
	cfg     Config
	log     *zap.Logger
	server  spec.ServerName
	store   *store.Store
	current store.Key
	old     []store.Key
}

// New opens the store and loads (or creates) the signing key.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	st, err := store.Open(ctx, deps.DatabaseURL)
	if err != nil {
		return nil, err
	}
	key, err := st.EnsureCurrentKey(ctx)
	if err != nil {
		st.Close()
		return nil, err
	}
	old, err := st.OldKeys(ctx)
	if err != nil {
		st.Close()
		return nil, err
	}
	deps.Logger.Info("signing key loaded", zap.String("key_id", key.ID))
	return &Service{cfg: cfg, log: deps.Logger, server: spec.ServerName(deps.ServerName), store: st, current: key, old: old}, nil
}

// RegisterGRPC registers the KeyService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	keyserverv1.RegisterKeyServiceServer(g, &handler{svc: s})
}

// RegisterHTTP serves the public key endpoints.
func (s *Service) RegisterHTTP(r chi.Router) {
	r.Get("/_matrix/key/v2/server", s.serveKeys)
	r.Get("/_matrix/key/v2/server/{keyID}", s.serveKeys)
}

// Run has no background work.
func (s *Service) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Ready reports whether the service can serve: its database answers.
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// Close releases the store.
func (s *Service) Close() { s.store.Close() }

// sign signs a JSON object with the current key.
func (s *Service) sign(message []byte) (signed []byte, signature []byte, err error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(message, &probe); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotJSONObject, err)
	}
	signed, err = gomatrixserverlib.SignJSON(string(s.server), gomatrixserverlib.KeyID(s.current.ID), s.current.Private, message)
	if err != nil {
		return nil, nil, err
	}
	var out struct {
		Signatures map[string]map[string]spec.Base64Bytes `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &out); err != nil {
		return nil, nil, err
	}
	return signed, out.Signatures[string(s.server)][s.current.ID], nil
}

// ErrBadEvent is returned when a proto-event cannot be built into an event
// (bad JSON, an unknown room version, or gomatrixserverlib's field checks).
var ErrBadEvent = errors.New("cannot build event")

// ErrEventTooLarge is returned when the built event would exceed the
// spec's size limits (65,536 bytes in all, 255 bytes for some fields).
var ErrEventTooLarge = errors.New("event too large")

// buildEvent completes a proto-event (JSON of gomatrixserverlib.ProtoEvent)
// into a signed event of this server with gomatrixserverlib's EventBuilder,
// signed by the current key: the only signature the event gets.
func (s *Service) buildEvent(version string, protoJSON []byte) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	var pe gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(protoJSON, &pe); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	// JSON gives prev_events and auth_events as []any; EventBuilder
	// handles []string (room versions 3+) and reference lists (1 and 2).
	pe.PrevEvents, pe.AuthEvents = stringList(pe.PrevEvents), stringList(pe.AuthEvents)
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&pe).Build(time.Now(), s.server,
		gomatrixserverlib.KeyID(s.current.ID), s.current.Private)
	var tooLarge gomatrixserverlib.EventValidationError
	if errors.As(err, &tooLarge) && tooLarge.Code == gomatrixserverlib.EventValidationTooLarge {
		return nil, fmt.Errorf("%w: %v", ErrEventTooLarge, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	return ev, nil
}

// stringList turns a decoded JSON list of strings into []string and leaves
// anything else (nil, a list of references) as it is.
func stringList(v any) any {
	list, ok := v.([]any)
	if !ok {
		return v
	}
	out := make([]string, len(list))
	for i, x := range list {
		if out[i], ok = x.(string); !ok {
			return v
		}
	}
	return out
}

// serverKeys is the body of GET /_matrix/key/v2/server, before signing.
type serverKeys struct {
	ServerName    string                  `json:"server_name"`
	VerifyKeys    map[string]verifyKey    `json:"verify_keys"`
	OldVerifyKeys map[string]oldVerifyKey `json:"old_verify_keys"`
	ValidUntilTS  int64                   `json:"valid_until_ts"`
}

type verifyKey struct {
	Key spec.Base64Bytes `json:"key"`
}

type oldVerifyKey struct {
	Key       spec.Base64Bytes `json:"key"`
	ExpiredTS int64            `json:"expired_ts"`
}

func (s *Service) keysBody(now time.Time) serverKeys {
	body := serverKeys{
		ServerName: string(s.server),
		VerifyKeys: map[string]verifyKey{
			s.current.ID: {Key: spec.Base64Bytes(s.current.Private.Public().(ed25519.PublicKey))},
		},
		OldVerifyKeys: map[string]oldVerifyKey{},
		ValidUntilTS:  now.Add(s.cfg.KeyValidity).UnixMilli(),
	}
	for _, k := range s.old {
		body.OldVerifyKeys[k.ID] = oldVerifyKey{Key: spec.Base64Bytes(k.Private.Public().(ed25519.PublicKey)), ExpiredTS: k.ExpiredAt.UnixMilli()}
	}
	return body
}
