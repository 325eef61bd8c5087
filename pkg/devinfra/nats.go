// Package devinfra starts the infrastructure of the all-in-one shape and of
// tests: an embedded NATS JetStream server and a PostgreSQL cluster made
// from the machine's PostgreSQL binaries. It changes the infrastructure
// only: services never know whether they run on it.
package devinfra

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// MaxPayload is the embedded server's largest message. A NATS server of
// the split shape needs the same max_payload (its default is 1 MB).
const MaxPayload = 8 << 20

// NATS is an embedded NATS server with JetStream.
type NATS struct {
	srv *server.Server
}

// StartNATS starts NATS with JetStream storing files under storeDir. port
// -1 picks a free port. Signals are left to the host process.
func StartNATS(storeDir string, host string, port int) (*NATS, error) {
	if host == "" {
		host = "127.0.0.1"
	}
	opts := &server.Options{
		ServerName: "myelin-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
		NoLog:      true,
		// JetStream's own memory limit; files hold the data.
		JetStreamMaxMemory: 64 << 20,
		// A commit's message carries the state events it adds; the
		// room-server splits one over room_server.max_message_bytes (or
		// this less 4 KiB) into parts, so this is headroom. 8 MB is the
		// most NATS recommends.
		MaxPayload: MaxPayload,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(15 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded NATS did not become ready")
	}
	return &NATS{srv: srv}, nil
}

// URL is the client URL, e.g. nats://127.0.0.1:4222.
func (n *NATS) URL() string { return n.srv.ClientURL() }

// Shutdown stops the server and waits for it.
func (n *NATS) Shutdown() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}
