package roomserver

import (
	"errors"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/myelin-chat/myelin/services/roomserver/outparts"
)

// Config is the room-server's own configuration (root key: room_server).
type Config struct {
	// DatabaseURL overrides the shared database.url for this service.
	DatabaseURL string `yaml:"database_url"`
	// MaxConns bounds the PostgreSQL pool.
	MaxConns int32 `yaml:"max_conns"`
	// DefaultRoomVersion is used when CreateRoom names no version.
	DefaultRoomVersion string `yaml:"default_room_version"`
	// MaxPrevEvents caps the prev_events of locally built events.
	MaxPrevEvents int `yaml:"max_prev_events"`
	// SnapshotBaseInterval is how many state deltas may stack on a base
	// snapshot before a full base snapshot is written again. It bounds the
	// work of reading any snapshot.
	SnapshotBaseInterval int `yaml:"snapshot_base_interval"`
	// StateCacheSize is how many resolved state snapshots stay in memory.
	StateCacheSize int `yaml:"state_cache_size"`
	// StateCacheMaxEntries bounds the state entries of all cached
	// snapshots together: a large room's state (10,000 members) is one
	// snapshot, so the count alone bounds nothing (about 70 bytes each).
	StateCacheMaxEntries int `yaml:"state_cache_max_entries"`
	// EventCacheSize is how many parsed events stay in memory, and
	// EventCacheMaxBytes bounds their memory together, estimated as
	// eventMemoryPerJSONByte times their JSON (measured under make
	// bench: 16 MiB of cached events' JSON held about 66 MiB of heap).
	EventCacheSize     int `yaml:"event_cache_size"`
	EventCacheMaxBytes int `yaml:"event_cache_max_bytes"`
	// StateKeyCacheSize is how many (type, state key) → NID mappings stay
	// in memory; RoomVersionCacheSize how many room versions.
	StateKeyCacheSize    int `yaml:"state_key_cache_size"`
	RoomVersionCacheSize int `yaml:"room_version_cache_size"`
	// MemberViewCacheSize is how many snapshots' memberships (for
	// federation queries) stay in memory, MemberViewMaxEntries their
	// members together.
	MemberViewCacheSize  int `yaml:"member_view_cache_size"`
	MemberViewMaxEntries int `yaml:"member_view_cache_max_entries"`
	// KeyCacheTTL is how long the key-server's public keys are trusted
	// before they are fetched again.
	KeyCacheTTL time.Duration `yaml:"key_cache_ttl"`
	// PublishPollInterval is how often the publisher looks for committed
	// events it was not told about (for example after another replica
	// committed them).
	PublishPollInterval time.Duration `yaml:"publish_poll_interval"`
	// OutboxPruneInterval is how often outbox rows already on JetStream
	// are deleted.
	OutboxPruneInterval time.Duration `yaml:"outbox_prune_interval"`
	// StreamReplicas is passed to bus.EnsureStreams; keep it equal to
	// nats.replicas.
	StreamReplicas int `yaml:"stream_replicas"`
	// MaxMessageBytes bounds one published room event message (and the
	// NATS server's max_payload, less some room for headers, bounds it
	// too): a commit whose state change is larger is published as
	// ordered parts (OutputRoomEvent.state_part).
	MaxMessageBytes int `yaml:"max_message_bytes"`
}

// eventMemoryPerJSONByte estimates a parsed event's memory from its JSON:
// the JSON itself, gomatrixserverlib's parsed fields and content, and the
// cache entry.
const eventMemoryPerJSONByte = 4

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxConns:             16,
		DefaultRoomVersion:   string(gomatrixserverlib.RoomVersionV11),
		MaxPrevEvents:        10,
		SnapshotBaseInterval: 64,
		StateCacheSize:       256,
		StateCacheMaxEntries: 100000,
		EventCacheSize:       20000,
		EventCacheMaxBytes:   24 << 20,
		StateKeyCacheSize:    100000,
		RoomVersionCacheSize: 100000,
		MemberViewCacheSize:  256,
		MemberViewMaxEntries: 100000,
		KeyCacheTTL:          5 * time.Minute,
		PublishPollInterval:  time.Second,
		OutboxPruneInterval:  time.Minute,
		StreamReplicas:       1,
		MaxMessageBytes:      1 << 20,
	}
}

// Validate checks the settings.
func (c Config) Validate() error {
	var errs []error
	if !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(c.DefaultRoomVersion)) {
		errs = append(errs, fmt.Errorf("default_room_version %q is not a stable room version", c.DefaultRoomVersion))
	}
	if c.MaxConns < 2 {
		errs = append(errs, errors.New("max_conns must be at least 2"))
	}
	if c.MaxPrevEvents < 1 {
		errs = append(errs, errors.New("max_prev_events must be at least 1"))
	}
	if c.SnapshotBaseInterval < 1 {
		errs = append(errs, errors.New("snapshot_base_interval must be at least 1"))
	}
	if c.StateCacheSize < 1 || c.EventCacheSize < 1 || c.EventCacheMaxBytes < 1 || c.StateCacheMaxEntries < 1 || c.StateKeyCacheSize < 1 ||
		c.RoomVersionCacheSize < 1 || c.MemberViewCacheSize < 1 || c.MemberViewMaxEntries < 1 {
		errs = append(errs, errors.New("state_cache_size, state_cache_max_entries, event_cache_size, event_cache_max_bytes, state_key_cache_size, room_version_cache_size, member_view_cache_size and member_view_cache_max_entries must be at least 1"))
	}
	if c.KeyCacheTTL <= 0 {
		errs = append(errs, errors.New("key_cache_ttl must be positive"))
	}
	if c.PublishPollInterval <= 0 {
		errs = append(errs, errors.New("publish_poll_interval must be positive"))
	}
	if c.OutboxPruneInterval <= 0 {
		errs = append(errs, errors.New("outbox_prune_interval must be positive"))
	}
	if c.MaxMessageBytes < outparts.MinMessageBytes {
		errs = append(errs, fmt.Errorf("max_message_bytes must be at least %d", outparts.MinMessageBytes))
	}
	if c.StreamReplicas < 1 {
		errs = append(errs, errors.New("stream_replicas must be at least 1"))
	}
	return errors.Join(errs...)
}
