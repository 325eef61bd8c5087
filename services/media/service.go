// Package media is the content repository: uploads, downloads and
// thumbnails of local media for the client-server API, with the content in
// a pluggable storage (a directory or an S3-compatible bucket, package
// storage) and the metadata in PostgreSQL (package store). Uploads stream
// to the storage and downloads stream from it. Other servers' media is
// fetched over federation and kept (remote.go), and URL previews fetch
// web pages through the same address rules as federation (preview.go). Requests carry the user's
// access token, which the client-API owns: the service asks its
// UserService to authenticate them. Its gRPC API (MediaService) takes
// media handed over by other services (ImportMedia).
package media

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/ratelimit"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	"github.com/myelin-chat/myelin/services/media/storage"
	"github.com/myelin-chat/myelin/services/media/store"
)

// Sentinel errors; handler.go turns them into gRPC statuses and the HTTP
// layer into Matrix errors.
var (
	// ErrBadRequest: malformed input.
	ErrBadRequest = errors.New("invalid request")
	// ErrTooLarge: content over max_upload_size.
	ErrTooLarge = errors.New("content too large")
)

// Deps are what the media service needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	// Users authenticates access tokens (the client-API's UserService).
	Users clientapiv1.UserServiceClient
	// Storage overrides the configured content storage (nil: build it
	// from Config.Storage).
	Storage storage.Backend
	// ServerKeys, when set (federation is on), verifies the X-Matrix
	// requests of federation media.
	ServerKeys keyserverv1.ServerKeyServiceClient
	// Federation signs and sends requests to other servers (remote
	// media); nil when federation is off, and remote media is 404.
	Federation *federation.Client
	// PreviewResolver answers the DNS questions of URL previews (nil:
	// the system's resolver).
	PreviewResolver federation.Resolver
}

// Service is a running media service.
type Service struct {
	cfg        Config
	log        *zap.Logger
	serverName string
	store      *store.Store
	content    storage.Backend
	users      clientapiv1.UserServiceClient
	limiter    *ratelimit.Limiter
	// fedAuth checks federation media requests; nil without federation.
	fedAuth *federation.Authenticator
	// preview makes URL previews (preview.go); remote fetches other
	// servers' media (remote.go).
	preview *previewer
	remote  *remoteMedia
	// now is the clock; tests may replace it.
	now func() time.Time
}

// New opens the store and the content storage.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.ServerName == "" || deps.Users == nil {
		return nil, errors.New("media: Logger, ServerName and Users are required")
	}
	content := deps.Storage
	if content == nil {
		var err error
		if content, err = openStorage(cfg); err != nil {
			return nil, err
		}
	}
	preview := &previewer{}
	if cfg.URLPreview.Enabled {
		var err error
		if preview.web, err = newWebClient(cfg.URLPreview, deps.PreviewResolver); err != nil {
			return nil, err
		}
	}
	remote := &remoteMedia{fed: deps.Federation}
	if deps.Federation != nil {
		remote.web = newRemoteWebClient(deps.Federation)
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxDatabaseConns)
	if err != nil {
		return nil, fmt.Errorf("media store: %w", err)
	}
	s := &Service{
		cfg:        cfg,
		log:        deps.Logger,
		serverName: deps.ServerName,
		store:      st,
		content:    content,
		users:      deps.Users,
		limiter:    ratelimit.New(cfg.RateLimit.Enabled, map[string]ratelimit.Bucket{limitMedia: cfg.RateLimit.bucket()}, time.Now),
		preview:    preview,
		remote:     remote,
		now:        time.Now,
	}
	preview.svc, remote.svc = s, s
	if deps.ServerKeys != nil {
		s.fedAuth = federation.NewAuthenticator(spec.ServerName(deps.ServerName), federation.NewVerifier(deps.ServerKeys, 5*time.Minute), deps.Logger)
	}
	return s, nil
}

// openStorage builds the configured content storage.
func openStorage(cfg Config) (storage.Backend, error) {
	switch cfg.Storage.Backend {
	case BackendS3:
		s3 := cfg.Storage.S3
		return storage.NewS3(storage.S3Options{
			Endpoint: s3.Endpoint, Insecure: s3.Insecure, Region: s3.Region, Bucket: s3.Bucket, Prefix: s3.Prefix,
			AccessKeyID: s3.AccessKeyID, SecretAccessKey: s3.SecretAccessKey, PathStyle: s3.PathStyle, PartSize: s3.PartSize,
		})
	default:
		if cfg.Storage.Path == "" {
			return nil, errors.New("media: storage.path must be set for the file backend")
		}
		return storage.NewFile(cfg.Storage.Path, cfg.AbandonedUploadAfter)
	}
}

// RegisterGRPC registers the MediaService (handler.go).
func (s *Service) RegisterGRPC(g *grpc.Server) {
	mediav1.RegisterMediaServiceServer(g, &handler{svc: s})
}

// RegisterHTTP mounts the content repository's endpoints (routes.go), and
// with federation on the federation media ones (federation.go), which the
// edge's federation listener forwards here in the split shape.
func (s *Service) RegisterHTTP(r chi.Router) {
	s.mountHTTP(r)
	s.mountFederation(r)
}

// RegisterFederationHTTP mounts federation media on the federation
// listener.
func (s *Service) RegisterFederationHTTP(r chi.Router) { s.mountFederation(r) }

// Run runs the janitor until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	return s.runJanitor(ctx)
}

// Ready reports whether the service can serve: its database and its
// content storage answer.
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if err := s.content.Ping(ctx); err != nil {
		return fmt.Errorf("content storage: %w", err)
	}
	return nil
}

// Close releases the store.
func (s *Service) Close() { s.store.Close() }
