package media

import (
	"errors"
	"fmt"
	"time"

	"github.com/myelin-chat/myelin/pkg/ratelimit"
)

// Config is the media service's own configuration (root key: media).
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxDatabaseConns caps the service's PostgreSQL pool.
	MaxDatabaseConns int32 `yaml:"max_database_conns"`
	// MaxUploadSize caps one upload, in bytes (m.upload.size); larger
	// uploads get 413 M_TOO_LARGE, also when the client sends no
	// Content-Length (counted while streaming).
	MaxUploadSize int64 `yaml:"max_upload_size"`
	// MaxUserTotal caps the bytes one user may have uploaded in all (0:
	// no cap); an upload past it gets 403 M_FORBIDDEN, as the spec asks
	// for quotas.
	MaxUserTotal int64 `yaml:"max_user_total"`
	// MaxThumbnailPixels: images with more pixels are not thumbnailed
	// (413 M_TOO_LARGE). Decoding holds the whole image in memory.
	MaxThumbnailPixels int64 `yaml:"max_thumbnail_pixels"`
	// UnauthenticatedDownload also serves media on the deprecated
	// /_matrix/media/{v3,r0}/download and /thumbnail endpoints. Off: the
	// spec asks servers to freeze them, and all of Myelin's media is newer
	// than the freeze.
	UnauthenticatedDownload bool `yaml:"unauthenticated_download"`
	// MaxPendingCreates caps a user's media IDs from POST /media/v1/create
	// that have no content yet (429 M_LIMIT_EXCEEDED beyond).
	MaxPendingCreates int `yaml:"max_pending_creates"`
	// CreateExpiry is how long such a media ID waits for its content.
	CreateExpiry time.Duration `yaml:"create_expiry"`
	// RateLimit throttles uploads and creates per user (admins are not
	// limited).
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// Storage is where the content goes; metadata stays in PostgreSQL.
	Storage StorageConfig `yaml:"storage"`
	// AbandonedUploadAfter: content whose upload started this long ago
	// and never finished (the process died in between) is deleted from
	// the storage by the janitor.
	AbandonedUploadAfter time.Duration `yaml:"abandoned_upload_after"`
	// JanitorInterval is how often the janitor runs (it also deletes
	// media IDs that were created and expired unused).
	JanitorInterval time.Duration `yaml:"janitor_interval"`
	// URLPreview configures URL previews (GET /media/preview_url).
	URLPreview URLPreviewConfig `yaml:"url_preview"`
	// Remote configures fetching other servers' media over federation.
	Remote RemoteConfig `yaml:"remote"`
}

// RateLimitConfig is the token bucket of uploads and creates.
type RateLimitConfig struct {
	Enabled   bool    `yaml:"enabled"`
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// bucket is the limiter's form of the setting.
func (c RateLimitConfig) bucket() ratelimit.Bucket {
	return ratelimit.Bucket{PerSecond: c.PerSecond, Burst: c.Burst}
}

// Storage backends.
const (
	BackendFile = "file"
	BackendS3   = "s3"
)

// StorageConfig chooses and configures the content storage.
type StorageConfig struct {
	// Backend is "file" (a directory; the default) or "s3" (an
	// S3-compatible bucket).
	Backend string `yaml:"backend"`
	// Path is the file backend's directory. Empty: <data_dir>/media. Every
	// replica of the media service needs the same directory (a shared
	// volume), or use s3.
	Path string `yaml:"path"`
	// S3 configures the s3 backend.
	S3 S3Config `yaml:"s3"`
}

// S3Config is an S3-compatible bucket.
type S3Config struct {
	// Endpoint is host:port of the S3 API (e.g. s3.eu-west-1.amazonaws.com,
	// minio:9000).
	Endpoint string `yaml:"endpoint"`
	// Insecure talks plain HTTP instead of HTTPS.
	Insecure bool   `yaml:"insecure"`
	Region   string `yaml:"region"`
	Bucket   string `yaml:"bucket"`
	// Prefix is put before every object name (e.g. "myelin/").
	Prefix string `yaml:"prefix"`
	// AccessKeyID and SecretAccessKey are the credentials (set them from
	// the environment: MYELIN_MEDIA_STORAGE_S3_ACCESS_KEY_ID,
	// MYELIN_MEDIA_STORAGE_S3_SECRET_ACCESS_KEY).
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
	// PathStyle addresses the bucket in the path (endpoint/bucket/key)
	// rather than as a subdomain; most self-hosted servers want it.
	PathStyle bool `yaml:"path_style"`
	// PartSize is the multipart part size for uploads whose length is
	// not known in advance (no Content-Length): each such upload buffers
	// one part in memory. At least 5 MiB.
	PartSize int64 `yaml:"part_size"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxDatabaseConns:   8,
		MaxUploadSize:      50 << 20,
		MaxThumbnailPixels: 32_000_000,
		MaxPendingCreates:  50,
		CreateExpiry:       24 * time.Hour,
		RateLimit:          RateLimitConfig{Enabled: true, PerSecond: 10, Burst: 50},
		Storage: StorageConfig{
			Backend: BackendFile,
			S3:      S3Config{Region: "us-east-1", PartSize: 16 << 20},
		},
		AbandonedUploadAfter: 24 * time.Hour,
		JanitorInterval:      time.Hour,
		URLPreview:           defaultURLPreviewConfig(),
		Remote:               defaultRemoteConfig(),
	}
}

// Validate checks the settings. An empty storage.path is allowed: the
// process fills it in (<data_dir>/media) before New.
func (c Config) Validate() error {
	var errs []error
	if c.MaxDatabaseConns < 2 {
		errs = append(errs, errors.New("max_database_conns must be at least 2"))
	}
	if c.MaxUploadSize < 1 || c.MaxThumbnailPixels < 1 || c.MaxPendingCreates < 1 || c.CreateExpiry <= 0 {
		errs = append(errs, errors.New("max_upload_size, max_thumbnail_pixels, max_pending_creates and create_expiry must be positive"))
	}
	if c.MaxUserTotal < 0 {
		errs = append(errs, errors.New("max_user_total must be >= 0 (0: no cap)"))
	}
	if c.RateLimit.Enabled && !c.RateLimit.bucket().Valid() {
		errs = append(errs, errors.New("rate_limit: per_second must be > 0 and burst >= 1"))
	}
	if c.AbandonedUploadAfter <= 0 || c.JanitorInterval <= 0 {
		errs = append(errs, errors.New("abandoned_upload_after and janitor_interval must be positive"))
	}
	errs = append(errs, c.URLPreview.validate(), c.Remote.validate())
	switch c.Storage.Backend {
	case BackendFile:
	case BackendS3:
		s3 := c.Storage.S3
		if s3.Endpoint == "" || s3.Bucket == "" {
			errs = append(errs, errors.New("storage.s3: endpoint and bucket must be set"))
		}
		if (s3.AccessKeyID == "") != (s3.SecretAccessKey == "") {
			errs = append(errs, errors.New("storage.s3: set both access_key_id and secret_access_key, or neither"))
		}
		if s3.PartSize < 5<<20 {
			errs = append(errs, errors.New("storage.s3.part_size must be at least 5 MiB"))
		}
	default:
		errs = append(errs, fmt.Errorf("storage.backend must be %q or %q, got %q", BackendFile, BackendS3, c.Storage.Backend))
	}
	return errors.Join(errs...)
}
