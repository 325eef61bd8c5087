package myelin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/config"
	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/services/appservice"
	"github.com/myelin-chat/myelin/services/clientapi"
	"github.com/myelin-chat/myelin/services/fedreceiver"
	"github.com/myelin-chat/myelin/services/fedsender"
	"github.com/myelin-chat/myelin/services/keyserver"
	"github.com/myelin-chat/myelin/services/media"
	"github.com/myelin-chat/myelin/services/presence"
	"github.com/myelin-chat/myelin/services/roomserver"
)

// Config is the root configuration: process-wide settings, then one key per
// service holding that service's own Config.
type Config struct {
	// ServerName is the Matrix server name (the part after ':' in user IDs).
	ServerName string `yaml:"server_name"`
	// DataDir holds the embedded NATS store and the local PostgreSQL
	// cluster in the all-in-one shape.
	DataDir string         `yaml:"data_dir"`
	Logging logging.Config `yaml:"logging"`
	// HTTP is this process's one HTTP listener.
	HTTP ListenConfig `yaml:"http"`
	// GRPC is this process's one gRPC listener and the mutual TLS of the
	// gRPC traffic between processes.
	GRPC GRPCConfig `yaml:"grpc"`
	// Database is the default PostgreSQL URL for every service. Empty in
	// the all-in-one shape: a local cluster is started under data_dir.
	Database DatabaseConfig `yaml:"database"`
	// NATS: empty url starts an embedded JetStream server under data_dir.
	NATS bus.Config `yaml:"nats"`
	// Services says where each service can be reached, for processes that
	// do not run it themselves (split shape) and for the edge router.
	Services ServiceAddresses `yaml:"services"`
	// Metrics, when metrics.listen is set (e.g. "0.0.0.0:9100"), serves
	// Prometheus metrics at /metrics on a listener of its own, never on the
	// public HTTP listener. Empty (the default) serves none.
	Metrics ListenConfig `yaml:"metrics"`
	// Debug holds opt-in diagnostics (off by default).
	Debug DebugConfig `yaml:"debug"`
	// Runtime holds Go runtime settings (memlimit.go).
	Runtime RuntimeConfig `yaml:"runtime"`
	// Federation is the server-server transport: the HTTPS federation
	// listener (federation.listen) and every outbound request to other
	// homeservers (discovery, TLS trust, the static server-name map, the
	// private-address allow-list). Off by default.
	Federation federation.Config `yaml:"federation"`

	KeyServer        keyserver.Config  `yaml:"key_server"`
	RoomServer       roomserver.Config `yaml:"room_server"`
	ClientAPI        clientapi.Config  `yaml:"client_api"`
	Presence         presence.Config   `yaml:"presence"`
	Media            media.Config      `yaml:"media"`
	FederationSender fedsender.Config  `yaml:"federation_sender"`
	// FederationReceiver is the federation-receiver's (issue #16).
	FederationReceiver fedreceiver.Config `yaml:"federation_receiver"`
	// Appservice is the appservice service's, and appservice.config_files
	// the registration files every process loads at start (issue #17).
	Appservice appservice.Config `yaml:"appservice"`
}

// ListenConfig is a listen address such as "127.0.0.1:8008" (":0" picks a
// free port).
type ListenConfig struct {
	Listen string `yaml:"listen"`
}

// GRPCConfig is the gRPC listener and, for the split shape, mutual TLS
// between the processes (grpc.tls: cert_file, key_file, ca_file; empty:
// plain). With TLS each service admits only its callers (CallerPolicy in callers.go).
type GRPCConfig struct {
	Listen string        `yaml:"listen"`
	TLS    rpc.TLSConfig `yaml:"tls"`
}

// DebugConfig holds opt-in diagnostics.
type DebugConfig struct {
	// PprofListen, when set (e.g. "127.0.0.1:6060"), serves Go's
	// net/http/pprof profiles (/debug/pprof/...) on a listener of its own,
	// never on the public HTTP listener. Empty (the default) serves nothing.
	PprofListen string `yaml:"pprof_listen"`
}

// DatabaseConfig is the shared PostgreSQL default.
type DatabaseConfig struct {
	URL string `yaml:"url"`
	// LocalSettings are extra PostgreSQL settings (name=value, comma
	// separated) for the local cluster started when URL is empty, e.g.
	// shared_preload_libraries=pg_stat_statements for the bench.
	LocalSettings string `yaml:"local_settings"`
}

// ServiceAddresses keys each service's addresses by service name.
type ServiceAddresses struct {
	KeyServer        ServiceAddress `yaml:"key_server"`
	RoomServer       ServiceAddress `yaml:"room_server"`
	ClientAPI        ServiceAddress `yaml:"client_api"`
	Presence         ServiceAddress `yaml:"presence"`
	Media            ServiceAddress `yaml:"media"`
	FederationSender ServiceAddress `yaml:"federation_sender"`
	// FederationReceiver: the edge's federation listener forwards
	// /_matrix/federation/* to its http address.
	FederationReceiver ServiceAddress `yaml:"federation_receiver"`
	Appservice         ServiceAddress `yaml:"appservice"`
}

// ServiceAddress is where a service's gRPC and HTTP listeners are. Empty
// means "in this process".
type ServiceAddress struct {
	GRPC string `yaml:"grpc"`
	HTTP string `yaml:"http"`
}

// DefaultConfig is the all-in-one configuration `make run` starts with.
func DefaultConfig() Config {
	return Config{
		ServerName:       "localhost",
		DataDir:          "./data",
		Logging:          logging.DefaultConfig(),
		HTTP:             ListenConfig{Listen: "127.0.0.1:8008"},
		GRPC:             GRPCConfig{Listen: "127.0.0.1:0"},
		NATS:             bus.Config{Replicas: 1},
		Runtime:          RuntimeConfig{MemoryLimit: "auto"},
		Federation:       federation.DefaultConfig(),
		KeyServer:        keyserver.DefaultConfig(),
		RoomServer:       roomserver.DefaultConfig(),
		ClientAPI:        clientapi.DefaultConfig(),
		Presence:         presence.DefaultConfig(),
		Media:            media.DefaultConfig(),
		FederationSender: fedsender.DefaultConfig(),

		FederationReceiver: fedreceiver.DefaultConfig(),
		Appservice:         appservice.DefaultConfig(),
	}
}

// Load applies defaults, then the YAML file (if path is not empty), then
// MYELIN_* environment variables, then Validate.
func Load(path string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		if err := config.LoadFile(path, &cfg); err != nil {
			return cfg, err
		}
	}
	if err := config.ApplyEnv(&cfg, os.LookupEnv); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// Validate checks the process-wide settings and every service's.
func (c *Config) Validate() error {
	var errs []error
	if c.ServerName == "" {
		errs = append(errs, errors.New("server_name must be set"))
	}
	if c.HTTP.Listen == "" {
		errs = append(errs, errors.New("http.listen must be set"))
	}
	if c.GRPC.Listen == "" {
		errs = append(errs, errors.New("grpc.listen must be set"))
	}
	errs = append(errs, c.GRPC.TLS.Validate())
	if c.DataDir == "" && (c.NATS.URL == "" || c.Database.URL == "") {
		errs = append(errs, errors.New("data_dir must be set when nats.url or database.url is empty"))
	}
	if c.DataDir == "" && c.Media.Storage.Backend == media.BackendFile && c.Media.Storage.Path == "" {
		errs = append(errs, errors.New("data_dir must be set when media.storage.path is empty (the file backend keeps media under data_dir/media)"))
	}
	if _, err := c.Runtime.memoryLimit(true); err != nil {
		errs = append(errs, fmt.Errorf("runtime.memory_limit: %w", err))
	}
	errs = append(errs,
		prefix("federation", c.Federation.Validate()),
		prefix("key_server", c.KeyServer.Validate()),
		prefix("room_server", c.RoomServer.Validate()),
		prefix("client_api", c.ClientAPI.Validate()),
		prefix("presence", c.Presence.Validate()),
		prefix("media", c.Media.Validate()),
		prefix("federation_sender", c.FederationSender.Validate()),
		prefix("federation_receiver", c.FederationReceiver.Validate()),
		prefix("appservice", c.Appservice.Validate()),
	)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	return nil
}

// dataPath resolves a path below data_dir.
func (c *Config) dataPath(elem ...string) string {
	return filepath.Join(append([]string{c.DataDir}, elem...)...)
}

func prefix(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", name, err)
}

// databaseURL is the service's own URL if set, else the shared one.
func (c *Config) databaseURL(own string) string {
	if own != "" {
		return own
	}
	return c.Database.URL
}
