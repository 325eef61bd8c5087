// Package fedpeer is another homeserver for tests: a signing key of its
// own, its keys served on /_matrix/key/v2/server, the federation reads a
// Myelin server makes of it (get_missing_events, state_ids, state, event,
// event_auth, backfill) answered from the events it holds, and signed
// (X-Matrix) requests to a Myelin federation listener: make_join and
// send_join, transactions, anything else. Its rooms are linear histories
// of events built and signed with gomatrixserverlib, each with its auth
// events from the room's state. It serves real HTTPS with a certificate
// from the test's CA (testkit.CA).
//
// The room-server's and the federation-receiver's tests both drive Myelin
// with it; it fails the test it was made for on any error of its own.
package fedpeer

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer/peercore"
)

// Server is the other homeserver.
type Server struct {
	t     testing.TB
	Name  spec.ServerName
	KeyID gomatrixserverlib.KeyID
	Key   ed25519.PrivateKey
	// Addr is its HTTPS listener (host:port) once Serve has run.
	Addr string
	// KeyRequests counts the requests for its keys it answered.
	KeyRequests atomic.Int64

	// Target is the Myelin server it talks to, TargetAddr that server's
	// federation listener and Client an HTTPS client trusting it (Connect).
	Target     spec.ServerName
	TargetAddr string
	Client     *http.Client
	txn        atomic.Int64

	// Mu guards Events, Rooms and the call counts and behaviours.
	Mu     sync.Mutex
	Events map[string]*Event
	Rooms  map[string]*Room
	// Devices are the device lists it answers /user/devices with, by
	// user ID.
	Devices map[string]fclient.RespUserDevices
	calls   map[string]int
	behave  map[string]string
	// OnRequest, when set, runs before each federation request it
	// answers (to stall it, say).
	OnRequest func(kind string)
}

// Event is an event the server holds, with the state before it (event IDs
// by state key) when it knows it.
type Event struct {
	PDU         gomatrixserverlib.PDU
	StateBefore map[gomatrixserverlib.StateKeyTuple]string
}

// New makes a server with a fresh ed25519 key. It serves nothing until
// Serve (or a test serves Handler itself).
func New(t testing.TB, name string) *Server {
	t.Helper()
	id, err := peercore.NewIdentity(spec.ServerName(name), "ed25519:remote")
	if err != nil {
		t.Fatal(err)
	}
	return &Server{t: t, Name: id.Name, KeyID: id.KeyID, Key: id.Key,
		Events: map[string]*Event{}, Rooms: map[string]*Room{}, Devices: map[string]fclient.RespUserDevices{}, calls: map[string]int{}, behave: map[string]string{}}
}

// Serve serves Handler over HTTPS on 127.0.0.1 with a certificate of ca
// for the server's name, until the test ends.
func (s *Server) Serve(ca *testkit.CA) {
	s.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	s.Addr = lis.Addr().String()
	srv := &http.Server{Handler: s.Handler(), TLSConfig: ca.TLSConfig(s.t, string(s.Name)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.ServeTLS(lis, "", "") }()
	s.t.Cleanup(func() { _ = srv.Close() })
}

// Connect points the server's requests at a Myelin server: its name, its
// federation listener, and ca to trust its certificate.
func (s *Server) Connect(target, addr string, ca *testkit.CA) {
	s.t.Helper()
	s.Target, s.TargetAddr, s.Client = spec.ServerName(target), addr, HTTPSClient(s.t, ca, target)
}

// HTTPSClient trusts ca and checks certificates for serverName.
func HTTPSClient(t testing.TB, ca *testkit.CA, serverName string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12},
	}}
}

// User is a user ID of the server.
func (s *Server) User(local string) string { return "@" + local + ":" + string(s.Name) }

// Called is how many requests of a kind ("get_missing_events",
// "state_ids", "state", "event", "event_auth", "backfill",
// "user_devices", "invite") it answered.
func (s *Server) Called(kind string) int {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	return s.calls[kind]
}

// SetBehaviour makes an endpoint kind misbehave: "slow" (answers only
// after the caller gave up), "garbage" (random bytes), "empty" (a valid
// answer without events), "error" (500); "" makes it behave again.
func (s *Server) SetBehaviour(kind, how string) {
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if how == "" {
		delete(s.behave, kind)
	} else {
		s.behave[kind] = how
	}
}

// Handler answers the server's keys and federation reads.
func (s *Server) Handler() http.Handler {
	m := chi.NewRouter()
	m.Get("/_matrix/key/v2/server", s.serveKeys)
	const v1 = "/_matrix/federation/v1"
	m.Post(v1+"/get_missing_events/{roomId}", s.federation("get_missing_events", s.serveMissing))
	m.Get(v1+"/state_ids/{roomId}", s.federation("state_ids", s.serveStateIDs))
	m.Get(v1+"/state/{roomId}", s.federation("state", s.serveState))
	m.Get(v1+"/event/{eventId}", s.federation("event", s.serveEvent))
	m.Get(v1+"/event_auth/{roomId}/{eventId}", s.federation("event_auth", s.serveEventAuth))
	m.Get(v1+"/backfill/{roomId}", s.federation("backfill", s.serveBackfill))
	m.Get(v1+"/user/devices/{userId}", s.federation("user_devices", s.serveUserDevices))
	m.Put("/_matrix/federation/v2/invite/{roomId}/{eventId}", s.federation("invite", s.serveInvite))
	return m
}

// Identity is the server's name and key as peercore's.
func (s *Server) Identity() peercore.Identity {
	return peercore.Identity{Name: s.Name, KeyID: s.KeyID, Key: s.Key}
}

// KeyResponse is the server's signed key response at now, valid for an
// hour (the server-server API's "Publishing Keys").
func (s *Server) KeyResponse(now time.Time) ([]byte, error) {
	return s.Identity().KeyResponse(now, time.Hour)
}

func (s *Server) serveKeys(w http.ResponseWriter, _ *http.Request) {
	s.KeyRequests.Add(1)
	raw, err := s.KeyResponse(time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(raw)
}

// federation wraps a handler: it checks that the request carries an
// X-Matrix header addressed here (from Target, when set), counts it and
// applies the endpoint's misbehaviour.
func (s *Server) federation(kind string, h func(*http.Request) (any, int)) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		_, origin, dest, _, _ := fclient.ParseAuthorization(req.Header.Get("Authorization"))
		if dest != s.Name || origin == "" || (s.Target != "" && origin != s.Target) {
			http.Error(w, `{"errcode":"M_UNAUTHORIZED"}`, http.StatusUnauthorized)
			return
		}
		s.Mu.Lock()
		s.calls[kind]++
		how, hook := s.behave[kind], s.OnRequest
		s.Mu.Unlock()
		if hook != nil {
			hook(kind)
		}
		switch how {
		case "slow":
			select {
			case <-req.Context().Done():
			case <-time.After(2 * time.Minute):
			}
			return
		case "garbage":
			junk := make([]byte, 4096)
			_, _ = rand.Read(junk)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(junk)
			return
		case "error":
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusInternalServerError)
			return
		}
		var resp any
		status := http.StatusOK
		if how == "empty" {
			resp = map[string]any{"events": []any{}, "pdus": []any{}, "pdu_ids": []any{}, "auth_chain": []any{}, "auth_chain_ids": []any{}}
		} else {
			resp, status = h(req)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(resp)
	}
}
