// Package keyserver owns keys: the homeserver's ed25519 signing key, every
// other server's verify keys, and users' end-to-end encryption keys. It
// creates, persists and rotates the signing key, signs JSON and builds
// events for the other services over gRPC, hands the key to the services
// that sign federation requests (SigningKey), fetches and caches other
// servers' keys directly or through notaries (QueryServerKeys, with
// gomatrixserverlib's key fetchers), publishes the public keys at
// GET /_matrix/key/v2/server and is a notary itself (/_matrix/key/v2/query).
// It stores users' device, one-time, fallback and cross-signing keys, the
// device list change log and key backups (E2EKeyService, e2ekeys.go,
// keybackup.go), and publishes each device list change on JetStream
// (publish.go).
package keyserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/federation"
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
	// Federation is the process's outbound federation transport, used to
	// fetch other servers' keys. Nil (or federation disabled) fetches
	// nothing: only this server's keys and the cache answer.
	Federation *federation.Transport
	// JetStream carries the key change stream (MYELIN_KEY_CHANGES). Every
	// process passes it; nil (tests of the signing keys alone) keeps the
	// key change log unpublished until a key-server with JetStream runs.
	JetStream jetstream.JetStream
}

// Service is a running key-server.
type Service struct {
	cfg    Config
	log    *zap.Logger
	server spec.ServerName
	store  *store.Store
	keys   atomic.Pointer[signingKeys]
	remote *remoteKeys
	// publisher sends committed key changes to JetStream (publish.go).
	publisher *publisher
}

// signingKeys is this server's current key and its expired ones.
type signingKeys struct {
	current store.Key
	old     []store.Key
}

// keyReloadInterval is how often the key-server reads its signing keys
// again, so that a rotation done through another replica reaches this one.
const keyReloadInterval = 30 * time.Second

// signingKeyRefresh is the valid_until_ts of SigningKey answers: holders ask
// again after it, so a rotation reaches every signer within it.
const signingKeyRefresh = time.Minute

// rotationGrace is how long a rotated-out key stays valid (its expired_ts
// ahead of the rotation). Holders of the key sign with it until they ask
// again: the room-server signs events with it, and other servers refuse an
// event signed by a key that had expired at the event's origin_server_ts.
// A replica other than the rotating one learns of the rotation within
// keyReloadInterval and a holder that asked it just before asks again
// within signingKeyRefresh; the rest is margin.
const rotationGrace = keyReloadInterval + signingKeyRefresh + 30*time.Second

// New opens the store and loads (or creates) the signing key.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: deps.Logger, server: spec.ServerName(deps.ServerName), store: st,
		publisher: newPublisher(st, deps.JetStream, deps.Logger, cfg.KeyChangePollInterval)}
	if err := s.loadKeys(ctx); err != nil {
		st.Close()
		return nil, err
	}
	if s.remote, err = newRemoteKeys(s, deps.Federation); err != nil {
		st.Close()
		return nil, err
	}
	deps.Logger.Info("signing key loaded", zap.String("key_id", s.current().ID))
	return s, nil
}

// loadKeys reads the current key (creating the first one) and the old keys.
func (s *Service) loadKeys(ctx context.Context) error {
	key, err := s.store.EnsureCurrentKey(ctx)
	if err != nil {
		return err
	}
	old, err := s.store.OldKeys(ctx)
	if err != nil {
		return err
	}
	if prev := s.keys.Load(); prev != nil && prev.current.ID != key.ID {
		s.log.Info("signing key changed (rotated)", zap.String("key_id", key.ID), zap.String("old_key_id", prev.current.ID))
	}
	s.keys.Store(&signingKeys{current: key, old: old})
	return nil
}

// current is the key that signs now.
func (s *Service) current() store.Key { return s.keys.Load().current }

// RegisterGRPC registers the KeyService, the ServerKeyService and the
// E2EKeyService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	keyserverv1.RegisterKeyServiceServer(g, &handler{svc: s})
	keyserverv1.RegisterServerKeyServiceServer(g, &serverKeyHandler{svc: s})
	keyserverv1.RegisterE2EKeyServiceServer(g, &e2eHandler{svc: s})
}

// RegisterHTTP serves the key endpoints on the client listener.
func (s *Service) RegisterHTTP(r chi.Router) { s.registerKeyRoutes(r) }

// RegisterFederationHTTP serves the same key endpoints on the federation
// listener.
func (s *Service) RegisterFederationHTTP(r chi.Router) { s.registerKeyRoutes(r) }

func (s *Service) registerKeyRoutes(r chi.Router) {
	r.Get("/_matrix/key/v2/server", s.serveKeys)
	r.Get("/_matrix/key/v2/server/{keyID}", s.serveKeys)
	r.Get("/_matrix/key/v2/query/{serverName}", s.serveQueryOne)
	r.Post("/_matrix/key/v2/query", s.serveQueryBatch)
}

// Run publishes key changes (when it has JetStream) and reads the signing
// keys again every keyReloadInterval, so that a rotation through another
// key-server replica reaches this one, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if s.publisher.js != nil {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return s.publisher.run(gctx) })
		g.Go(func() error { return s.reloadKeys(gctx) })
		return g.Wait()
	}
	return s.reloadKeys(ctx)
}

// reloadKeys reads the signing keys every keyReloadInterval until ctx ends.
func (s *Service) reloadKeys(ctx context.Context) error {
	tick := time.NewTicker(keyReloadInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := s.loadKeys(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("reload signing keys", zap.Error(err))
			}
		}
	}
}

// rotate replaces the signing key; the old one joins old_verify_keys. Its
// expired_ts is keyReloadInterval ahead: events signed with it before the
// rotation (whose origin_server_ts may equal the rotation's millisecond)
// and by replicas that have not reloaded the keys yet must verify, and an
// event's timestamp is its signer's choice anyway, so an earlier expiry
// would not stop a holder of the old key from backdating.
func (s *Service) rotate(ctx context.Context) (old, current store.Key, err error) {
	old, current, err = s.store.RotateKey(ctx, time.Now().Add(rotationGrace).Truncate(time.Millisecond))
	if err != nil {
		return old, current, err
	}
	if err := s.loadKeys(ctx); err != nil {
		return old, current, err
	}
	s.log.Info("signing key rotated", zap.String("key_id", current.ID), zap.String("old_key_id", old.ID))
	return old, current, nil
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

// sign signs a JSON object with the current key and returns the signed
// JSON, the signature and the ID of the key that made it.
func (s *Service) sign(message []byte) (signed, signature []byte, keyID string, err error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(message, &probe); err != nil {
		return nil, nil, "", fmt.Errorf("%w: %v", ErrNotJSONObject, err)
	}
	key := s.current()
	signed, err = gomatrixserverlib.SignJSON(string(s.server), gomatrixserverlib.KeyID(key.ID), key.Private, message)
	if err != nil {
		return nil, nil, "", err
	}
	var out struct {
		Signatures map[string]map[string]spec.Base64Bytes `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &out); err != nil {
		return nil, nil, "", err
	}
	return signed, out.Signatures[string(s.server)][key.ID], key.ID, nil
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
	keys := s.keys.Load()
	body := serverKeys{
		ServerName: string(s.server),
		VerifyKeys: map[string]verifyKey{
			keys.current.ID: {Key: spec.Base64Bytes(keys.current.Private.Public().(ed25519.PublicKey))},
		},
		OldVerifyKeys: map[string]oldVerifyKey{},
		ValidUntilTS:  now.Add(s.cfg.KeyValidity).UnixMilli(),
	}
	for _, k := range keys.old {
		body.OldVerifyKeys[k.ID] = oldVerifyKey{Key: spec.Base64Bytes(k.Private.Public().(ed25519.PublicKey)), ExpiredTS: k.ExpiredAt.UnixMilli()}
	}
	return body
}
