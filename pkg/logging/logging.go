// Package logging builds the process's zap logger and keeps the field names
// for Matrix identifiers the same in every service.
package logging

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config selects the level and encoding.
type Config struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // console or json
}

// DefaultConfig logs info and up to the console.
func DefaultConfig() Config { return Config{Level: "info", Format: "console"} }

// New builds a logger. The caller owns it; there is no global logger.
func New(cfg Config) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return nil, fmt.Errorf("logging.level: %w", err)
	}
	var zc zap.Config
	switch cfg.Format {
	case "json":
		zc = zap.NewProductionConfig()
	case "console", "":
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
		zc.DisableStacktrace = true
	default:
		return nil, fmt.Errorf("logging.format: unknown %q", cfg.Format)
	}
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Sampling = nil
	return zc.Build()
}

// Service names the service a logger belongs to; New of every service adds it once.
func Service(name string) zap.Field { return zap.String("service", name) }

// RoomID, UserID, EventID and DeviceID are the field helpers for Matrix IDs.
func RoomID(id string) zap.Field   { return zap.String("room_id", id) }
func UserID(id string) zap.Field   { return zap.String("user_id", id) }
func EventID(id string) zap.Field  { return zap.String("event_id", id) }
func DeviceID(id string) zap.Field { return zap.String("device_id", id) }
