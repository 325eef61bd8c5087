package fedsender_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/matrix-org/util"
	"github.com/sirupsen/logrus"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// remote is another homeserver in the tests, made of gomatrixserverlib
// pieces: its own ed25519 key served on /_matrix/key/v2/server, real
// HTTPS with a certificate from the test's CA, every federation request
// it gets checked with fclient.VerifyHTTPRequest against keys it fetches
// from Myelin's federation listener (a gomatrixserverlib KeyRing with a
// DirectKeyFetcher), rooms it holds (a linear history it builds and signs),
// and the federation endpoints the sender calls. What it receives is kept
// for the tests to count.
type remote struct {
	t      testing.TB
	name   string
	keyID  gomatrixserverlib.KeyID
	key    ed25519.PrivateKey
	tlsCfg *tls.Config
	addr   string
	keys   *gomatrixserverlib.KeyRing
	quiet  *logrus.Entry
	router chi.Router

	mu   sync.Mutex
	srv  *http.Server
	lis  net.Listener
	mode remoteMode
	// delay holds each answer to a transaction this long (a slow server).
	delay time.Duration
	// hang is closed to let requests held by modeSlow go.
	hang chan struct{}
	// txns: transaction ID → canonical body: a repeat must be identical.
	txns map[string][]byte
	// pdus in the order they arrived (repeats of a transaction ID not
	// counted again).
	pdus []gotPDU
	edus []gotEDU
	// inflight counts the transactions being handled by ID; overlaps
	// counts those that began while another transaction (another ID) was
	// in flight, sameIDOverlaps those that began while the same one was
	// (a retry racing the first attempt, which the ID dedupes).
	inflight                 map[string]int
	overlaps, sameIDOverlaps int
	// repeats counts transactions that came again with an ID already
	// received (dropped, as the spec's idempotency asks).
	repeats int
	// maxPDUs/maxEDUs seen in one transaction.
	maxPDUs, maxEDUs int
	authFailures     int
	rooms            map[string]*remoteRoom
	// refuse: path prefix → status and errcode the remote answers with.
	refuse map[string]refusal
	// garbage: path prefixes answered 200 with a body that is not JSON.
	garbage []string
	// calls counts requests by route pattern.
	calls map[string]int
	// noV2 answers 404 to send_join v2 (so the sender falls back to v1).
	noV2 bool
	// pduError answers every PDU of a transaction with an error.
	pduError bool
	// tamperInvites changes the invites it signs (a broken or malicious
	// server).
	tamperInvites bool
	// profiles, aliases, public rooms, devices and keys it answers with.
	profiles map[string]map[string]string
	aliases  map[string]string
	devices  map[string][]map[string]any
}

type remoteMode int

const (
	modeUp remoteMode = iota
	// modeSlow holds transactions until r.release (it records them first).
	modeSlow
	// modeGarbage answers transactions 200 with a body that is not JSON.
	modeGarbage
	// modeError answers transactions 500.
	modeError
)

type refusal struct {
	status  int
	errcode string
}

type gotPDU struct {
	txnID   string
	eventID string
	roomID  string
	raw     json.RawMessage
}

type gotEDU struct {
	txnID   string
	typ     string
	content json.RawMessage
}

// newRemote starts a remote server named name (its HTTPS listener on a
// free loopback port), which fetches the keys of ourName from ourAddr()
// when it first checks a request.
func newRemote(t testing.TB, ca *testkit.CA, name, ourName string, ourAddr func() string) *remote {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	r := &remote{
		t: t, name: name, keyID: "ed25519:r", key: key, tlsCfg: ca.TLSConfig(t, name), quiet: logrus.NewEntry(quiet),
		txns: map[string][]byte{}, rooms: map[string]*remoteRoom{}, refuse: map[string]refusal{}, calls: map[string]int{},
		profiles: map[string]map[string]string{}, aliases: map[string]string{}, devices: map[string][]map[string]any{},
		hang: make(chan struct{}),
	}
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	// The remote reaches Myelin's federation listener through this
	// transport: matrix://<ourName>/... → https://<ourAddr>/..., the
	// certificate checked against the test CA for ourName.
	toUs := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: ourName, MinVersion: tls.VersionTLS12}}
	rt := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if req.URL.Host != ourName {
			return nil, fmt.Errorf("remote %s knows no server %s", name, req.URL.Host)
		}
		out := req.Clone(req.Context())
		out.URL.Scheme, out.URL.Host, out.Host = "https", ourAddr(), ourName
		return toUs.RoundTrip(out)
	})
	t.Cleanup(toUs.CloseIdleConnections)
	r.keys = &gomatrixserverlib.KeyRing{
		KeyFetchers: []gomatrixserverlib.KeyFetcher{&gomatrixserverlib.DirectKeyFetcher{
			Client:            fclient.NewClient(fclient.WithTransport(rt)),
			IsLocalServerName: func(s spec.ServerName) bool { return s == spec.ServerName(name) },
			LocalPublicKey:    spec.Base64Bytes(key.Public().(ed25519.PublicKey)),
		}},
		KeyDatabase: &memKeyDB{keys: map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}},
	}
	r.routes()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = lis.Addr().String()
	r.serve(lis)
	t.Cleanup(func() {
		r.mu.Lock()
		srv := r.srv
		r.mu.Unlock()
		r.release()
		if srv != nil {
			_ = srv.Close()
		}
	})
	return r
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (r *remote) serve(lis net.Listener) {
	srv := &http.Server{Handler: r.router, TLSConfig: r.tlsCfg.Clone(), ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	r.mu.Lock()
	r.srv, r.lis = srv, lis
	r.mu.Unlock()
	go func() { _ = srv.ServeTLS(lis, "", "") }()
}

// down stops the server: connections are refused.
func (r *remote) down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// up starts the server again on its address.
func (r *remote) up() {
	r.t.Helper()
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatalf("remote %s up again on %s: %v", r.name, r.addr, err)
	}
	r.serve(lis)
}

func (r *remote) setMode(m remoteMode) {
	r.mu.Lock()
	r.mode = m
	r.mu.Unlock()
}

// setDelay makes the remote answer transactions after d.
func (r *remote) setDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

// release lets held requests go (modeSlow).
func (r *remote) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.hang:
	default:
		close(r.hang)
	}
}

func (r *remote) user(local string) string { return "@" + local + ":" + r.name }

func (r *remote) routes() {
	rt := chi.NewRouter()
	rt.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			defer func() {
				if p := recover(); p != nil {
					r.t.Errorf("remote %s: panic serving %s %s: %v\n%s", r.name, req.Method, req.URL.Path, p, debug.Stack())
					writeJSON(w, 500, map[string]string{"errcode": "M_UNKNOWN"})
				}
			}()
			next.ServeHTTP(w, req)
		})
	})
	rt.Get("/_matrix/key/v2/server", r.serveKeys)
	rt.Group(func(g chi.Router) {
		g.Use(r.authenticate)
		g.Put("/_matrix/federation/v1/send/{txnID}", r.serveSend)
		g.Get("/_matrix/federation/v1/make_join/{roomID}/{userID}", r.serveMakeJoin)
		g.Put("/_matrix/federation/v2/send_join/{roomID}/{eventID}", r.serveSendJoin(2))
		g.Put("/_matrix/federation/v1/send_join/{roomID}/{eventID}", r.serveSendJoin(1))
		g.Get("/_matrix/federation/v1/make_leave/{roomID}/{userID}", r.serveMakeMembership(spec.Leave))
		g.Put("/_matrix/federation/v2/send_leave/{roomID}/{eventID}", r.serveSendMembership(spec.Leave))
		g.Get("/_matrix/federation/v1/make_knock/{roomID}/{userID}", r.serveMakeMembership(spec.Knock))
		g.Put("/_matrix/federation/v1/send_knock/{roomID}/{eventID}", r.serveSendMembership(spec.Knock))
		g.Put("/_matrix/federation/v2/invite/{roomID}/{eventID}", r.serveInvite)
		g.Get("/_matrix/federation/v1/event/{eventID}", r.serveEvent)
		g.Get("/_matrix/federation/v1/state/{roomID}", r.serveState)
		g.Get("/_matrix/federation/v1/backfill/{roomID}", r.serveBackfill)
		g.Get("/_matrix/federation/v1/query/profile", r.serveProfile)
		g.Get("/_matrix/federation/v1/query/directory", r.serveDirectory)
		g.Get("/_matrix/federation/v1/publicRooms", r.servePublicRooms)
		g.Post("/_matrix/federation/v1/publicRooms", r.servePublicRooms)
		g.Get("/_matrix/federation/v1/hierarchy/{roomID}", r.serveHierarchy)
		g.Get("/_matrix/federation/v1/user/devices/{userID}", r.serveDevices)
		g.Post("/_matrix/federation/v1/user/keys/query", r.serveKeysQuery)
		g.Post("/_matrix/federation/v1/user/keys/claim", r.serveKeysClaim)
	})
	rt.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_UNRECOGNIZED", "error": "unknown endpoint"})
	})
	r.router = rt
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (r *remote) serveKeys(w http.ResponseWriter, _ *http.Request) {
	fields := gomatrixserverlib.ServerKeyFields{
		ServerName:   spec.ServerName(r.name),
		VerifyKeys:   map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{r.keyID: {Key: spec.Base64Bytes(r.key.Public().(ed25519.PublicKey))}},
		ValidUntilTS: spec.AsTimestamp(time.Now().Add(time.Hour)),
	}
	raw, _ := json.Marshal(fields)
	signed, err := gomatrixserverlib.SignJSON(r.name, r.keyID, r.key, raw)
	if err != nil {
		writeJSON(w, 500, map[string]string{"errcode": "M_UNKNOWN"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(signed)
}

type fedReqKey struct{}

// authenticate checks the X-Matrix signature of every federation request
// and applies the configured refusals.
func (r *remote) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fedReq, resp := fclient.VerifyHTTPRequest(req.WithContext(util.ContextWithLogger(req.Context(), r.quiet)), time.Now(), spec.ServerName(r.name), nil, r.keys)
		if fedReq == nil {
			r.mu.Lock()
			r.authFailures++
			r.mu.Unlock()
			r.t.Logf("remote %s: request %s %s refused: %d %v", r.name, req.Method, req.URL.Path, resp.Code, resp.JSON)
			writeJSON(w, resp.Code, resp.JSON)
			return
		}
		r.mu.Lock()
		pattern := chi.RouteContext(req.Context()).RoutePattern()
		r.calls[pattern]++
		var ref *refusal
		for prefix, rf := range r.refuse {
			if len(req.URL.Path) >= len(prefix) && req.URL.Path[:len(prefix)] == prefix {
				rf := rf
				ref = &rf
			}
		}
		junk := false
		for _, prefix := range r.garbage {
			junk = junk || strings.HasPrefix(req.URL.Path, prefix)
		}
		r.mu.Unlock()
		if junk {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("<html>not the protocol"))
			return
		}
		if ref != nil {
			writeJSON(w, ref.status, map[string]string{"errcode": ref.errcode, "error": "refused by the test"})
			return
		}
		next.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), fedReqKey{}, fedReq)))
	})
}

func fedRequest(req *http.Request) *fclient.FederationRequest {
	return req.Context().Value(fedReqKey{}).(*fclient.FederationRequest)
}

func (r *remote) called(pattern string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[pattern]
}

func (r *remote) serveSend(w http.ResponseWriter, req *http.Request) {
	fr := fedRequest(req)
	txnID := chi.URLParam(req, "txnID")
	r.mu.Lock()
	if r.inflight == nil {
		r.inflight = map[string]int{}
	}
	for id, n := range r.inflight {
		switch {
		case n > 0 && id != txnID:
			r.overlaps++
		case n > 0:
			r.sameIDOverlaps++
		}
	}
	r.inflight[txnID]++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inflight[txnID]--
		r.mu.Unlock()
	}()
	var body struct {
		Origin string                  `json:"origin"`
		PDUs   []json.RawMessage       `json:"pdus"`
		EDUs   []gomatrixserverlib.EDU `json:"edus"`
	}
	if err := json.Unmarshal(fr.Content(), &body); err != nil {
		writeJSON(w, 400, map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()})
		return
	}
	canonical, _ := gomatrixserverlib.CanonicalJSON(fr.Content())
	r.mu.Lock()
	mode, delay := r.mode, r.delay
	hang := r.hang
	prev, repeat := r.txns[txnID]
	if repeat && string(prev) != string(canonical) {
		r.mu.Unlock()
		r.t.Errorf("remote %s: transaction %s sent again with other content", r.name, txnID)
		writeJSON(w, 400, map[string]string{"errcode": "M_INVALID_PARAM"})
		return
	}
	if repeat {
		r.repeats++
	}
	results := map[string]any{}
	if !repeat && mode != modeError {
		r.txns[txnID] = canonical
		r.maxPDUs, r.maxEDUs = max(r.maxPDUs, len(body.PDUs)), max(r.maxEDUs, len(body.EDUs))
		for _, raw := range body.PDUs {
			p := gotPDU{txnID: txnID, raw: raw}
			var head struct {
				RoomID string `json:"room_id"`
			}
			_ = json.Unmarshal(raw, &head)
			p.roomID = head.RoomID
			if rr := r.rooms[head.RoomID]; rr != nil {
				if ev, err := rr.verImpl.NewEventFromUntrustedJSON(raw); err == nil {
					p.eventID = ev.EventID()
					rr.apply(ev)
				}
			}
			if p.eventID == "" {
				p.eventID = eventIDOfAny(raw)
			}
			r.pdus = append(r.pdus, p)
			results[p.eventID] = map[string]any{}
			if r.pduError {
				results[p.eventID] = map[string]any{"error": "refused by the test"}
			}
		}
		for _, e := range body.EDUs {
			r.edus = append(r.edus, gotEDU{txnID: txnID, typ: e.Type, content: json.RawMessage(e.Content)})
		}
	}
	r.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-req.Context().Done():
			return
		}
	}
	switch mode {
	case modeSlow:
		select {
		case <-hang:
		case <-req.Context().Done():
			return
		}
	case modeGarbage:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("<html>this is not JSON"))
		return
	case modeError:
		writeJSON(w, 500, map[string]string{"errcode": "M_UNKNOWN", "error": "down for the test"})
		return
	}
	writeJSON(w, 200, map[string]any{"pdus": results})
}

// eventIDOfAny is the ID of an event of a room the remote does not hold:
// its event_id (room versions 1 and 2) or its reference hash in any
// later version's format.
func eventIDOfAny(raw json.RawMessage) string {
	var head struct {
		EventID string `json:"event_id"`
	}
	if json.Unmarshal(raw, &head) == nil && head.EventID != "" {
		return head.EventID
	}
	ev, err := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV11).NewEventFromTrustedJSON(raw, false)
	if err != nil {
		return ""
	}
	return ev.EventID()
}

// received returns the PDUs received of a room, in arrival order.
func (r *remote) received(roomID string) []gotPDU {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []gotPDU
	for _, p := range r.pdus {
		if p.roomID == roomID {
			out = append(out, p)
		}
	}
	return out
}

// receivedEDUs returns the EDUs of a type received, in arrival order.
func (r *remote) receivedEDUs(typ string) []gotEDU {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []gotEDU
	for _, e := range r.edus {
		if e.typ == typ {
			out = append(out, e)
		}
	}
	return out
}

func (r *remote) stats() (maxPDUs, maxEDUs, authFailures int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxPDUs, r.maxEDUs, r.authFailures
}

// room returns a room the remote holds.
func (r *remote) room(roomID string) *remoteRoom {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rooms[roomID]
}

func (r *remote) roomOf(w http.ResponseWriter, req *http.Request) *remoteRoom {
	rr := r.room(chi.URLParam(req, "roomID"))
	if rr == nil {
		writeJSON(w, 404, map[string]string{"errcode": "M_NOT_FOUND", "error": "no such room here"})
	}
	return rr
}

func (r *remote) serveMakeJoin(w http.ResponseWriter, req *http.Request) {
	rr := r.roomOf(w, req)
	if rr == nil {
		return
	}
	userID := chi.URLParam(req, "userID")
	vers := req.URL.Query()["ver"]
	if !slices.Contains(vers, string(rr.verImpl.Version())) {
		writeJSON(w, 400, map[string]any{"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": "version", "room_version": rr.verImpl.Version()})
		return
	}
	content := map[string]any{"membership": "join"}
	if rr.joinRule() == "restricted" {
		content["join_authorised_via_users_server"] = rr.creator
	}
	r.mu.Lock()
	pe := rr.proto(userID, spec.MRoomMember, &userID, content)
	r.mu.Unlock()
	writeJSON(w, 200, map[string]any{"event": pe, "room_version": rr.verImpl.Version()})
}

func (r *remote) serveSendJoin(version int) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		noV2 := r.noV2
		r.mu.Unlock()
		if version == 2 && noV2 {
			writeJSON(w, 404, map[string]string{"errcode": "M_UNRECOGNIZED", "error": "no v2 here"})
			return
		}
		rr := r.roomOf(w, req)
		if rr == nil {
			return
		}
		ev, ok := r.checkMembership(w, req, rr, spec.Join)
		if !ok {
			return
		}
		if rr.joinRule() == "restricted" {
			ev = ev.Sign(r.name, r.keyID, r.key)
		}
		r.mu.Lock()
		state := rr.stateEvents()
		chain := rr.authChain(append(slices.Clone(state), ev))
		rr.apply(ev)
		r.mu.Unlock()
		resp := map[string]any{"origin": r.name, "state": rawEvents(state), "auth_chain": rawEvents(chain), "event": json.RawMessage(ev.JSON())}
		if version == 1 {
			writeJSON(w, 200, []any{200, resp})
			return
		}
		writeJSON(w, 200, resp)
	}
}

// checkMembership parses and checks a membership event a server sent:
// for the room, of the type, signed by its sender's server.
func (r *remote) checkMembership(w http.ResponseWriter, req *http.Request, rr *remoteRoom, membership string) (gomatrixserverlib.PDU, bool) {
	ev, err := rr.verImpl.NewEventFromUntrustedJSON(fedRequest(req).Content())
	if err == nil && ev.EventID() != chi.URLParam(req, "eventID") {
		err = fmt.Errorf("event ID %s, path says %s", ev.EventID(), chi.URLParam(req, "eventID"))
	}
	if err == nil {
		if m, _ := ev.Membership(); m != membership || ev.Type() != spec.MRoomMember || ev.RoomID().String() != rr.roomID {
			err = fmt.Errorf("not a %s of the room", membership)
		}
	}
	if err == nil {
		// A restricted join names this server, which signs it next.
		err = gomatrixserverlib.VerifyEventSignatures(req.Context(), ev, signedBy{r.keys, spec.ServerName(r.name)}, func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
			return spec.NewUserID(string(s), true)
		})
	}
	if err != nil {
		r.t.Errorf("remote %s: bad %s event: %v", r.name, membership, err)
		writeJSON(w, 400, map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()})
		return nil, false
	}
	return ev, true
}

func (r *remote) serveMakeMembership(membership string) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		rr := r.roomOf(w, req)
		if rr == nil {
			return
		}
		if membership == spec.Knock && slices.Contains([]string{"1", "2", "3", "4", "5", "6"}, string(rr.verImpl.Version())) {
			writeJSON(w, 400, map[string]any{"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": "no knocking in this version", "room_version": rr.verImpl.Version()})
			return
		}
		userID := chi.URLParam(req, "userID")
		r.mu.Lock()
		pe := rr.proto(userID, spec.MRoomMember, &userID, map[string]any{"membership": membership})
		r.mu.Unlock()
		writeJSON(w, 200, map[string]any{"event": pe, "room_version": rr.verImpl.Version()})
	}
}

func (r *remote) serveSendMembership(membership string) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		rr := r.roomOf(w, req)
		if rr == nil {
			return
		}
		ev, ok := r.checkMembership(w, req, rr, membership)
		if !ok {
			return
		}
		r.mu.Lock()
		rr.apply(ev)
		var stripped []json.RawMessage
		for _, key := range []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomJoinRules}, {EventType: spec.MRoomName}} {
			if se := rr.state[key]; se != nil {
				if rr.verImpl.Version() == gomatrixserverlib.RoomVersionV12 {
					stripped = append(stripped, se.JSON())
				} else {
					raw, _ := json.Marshal(gomatrixserverlib.NewInviteStrippedState(se))
					stripped = append(stripped, raw)
				}
			}
		}
		r.mu.Unlock()
		if membership == spec.Knock {
			writeJSON(w, 200, map[string]any{"knock_room_state": stripped})
			return
		}
		writeJSON(w, 200, map[string]any{})
	}
}

func (r *remote) serveInvite(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Event           json.RawMessage   `json:"event"`
		RoomVersion     string            `json:"room_version"`
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	}
	if err := json.Unmarshal(fedRequest(req).Content(), &body); err != nil {
		writeJSON(w, 400, map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()})
		return
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(body.RoomVersion))
	if err != nil {
		writeJSON(w, 400, map[string]any{"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": err.Error()})
		return
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(body.Event)
	if err == nil {
		err = gomatrixserverlib.VerifyEventSignatures(req.Context(), ev, signedBy{r.keys, spec.ServerName(r.name)}, func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
			return spec.NewUserID(string(s), true)
		})
	}
	if err != nil || ev.EventID() != chi.URLParam(req, "eventID") {
		r.t.Errorf("remote %s: bad invite: %v", r.name, err)
		writeJSON(w, 400, map[string]string{"errcode": "M_BAD_JSON", "error": fmt.Sprint(err)})
		return
	}
	r.mu.Lock()
	r.calls["invite_room_state"] = len(body.InviteRoomState)
	r.mu.Unlock()
	signed := ev.Sign(r.name, r.keyID, r.key)
	out := signed.JSON()
	r.mu.Lock()
	tamper := r.tamperInvites
	r.mu.Unlock()
	if tamper {
		var m map[string]any
		_ = json.Unmarshal(out, &m)
		m["content"] = map[string]any{"membership": "invite", "displayname": "changed"}
		out, _ = json.Marshal(m)
	}
	writeJSON(w, 200, map[string]any{"event": json.RawMessage(out)})
}

// signedBy is a JSONVerifier that takes this server's own signatures as
// good (the invite is not signed by it yet) and checks others with keys.
type signedBy struct {
	keys gomatrixserverlib.JSONVerifier
	self spec.ServerName
}

func (s signedBy) VerifyJSONs(ctx context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	var others []gomatrixserverlib.VerifyJSONRequest
	var idx []int
	for i, req := range reqs {
		if req.ServerName == s.self {
			continue
		}
		others = append(others, req)
		idx = append(idx, i)
	}
	res, err := s.keys.VerifyJSONs(ctx, others)
	if err != nil {
		return nil, err
	}
	for j, i := range idx {
		out[i] = res[j]
	}
	return out, nil
}

func (r *remote) findEvent(eventID string) (*remoteRoom, gomatrixserverlib.PDU) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rr := range r.rooms {
		for _, ev := range rr.events {
			if ev.EventID() == eventID {
				return rr, ev
			}
		}
	}
	return nil, nil
}

func (r *remote) serveEvent(w http.ResponseWriter, req *http.Request) {
	_, ev := r.findEvent(chi.URLParam(req, "eventID"))
	if ev == nil {
		writeJSON(w, 404, map[string]string{"errcode": "M_NOT_FOUND", "error": "no such event"})
		return
	}
	writeJSON(w, 200, map[string]any{"origin": r.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{ev.JSON()}})
}

// serveState answers the state before an event with its auth chain.
func (r *remote) serveState(w http.ResponseWriter, req *http.Request) {
	rr := r.roomOf(w, req)
	if rr == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	state, ok := rr.stateBefore(req.URL.Query().Get("event_id"))
	if !ok {
		writeJSON(w, 404, map[string]string{"errcode": "M_NOT_FOUND", "error": "no such event"})
		return
	}
	writeJSON(w, 200, map[string]any{"pdus": rawEvents(state), "auth_chain": rawEvents(rr.authChain(state))})
}

// serveBackfill answers the given event and those before it, newest first.
func (r *remote) serveBackfill(w http.ResponseWriter, req *http.Request) {
	rr := r.roomOf(w, req)
	if rr == nil {
		return
	}
	limit, _ := strconv.Atoi(req.URL.Query().Get("limit"))
	from := req.URL.Query()["v"]
	r.mu.Lock()
	defer r.mu.Unlock()
	top := -1
	for i, ev := range rr.events {
		if slices.Contains(from, ev.EventID()) {
			top = max(top, i)
		}
	}
	var out []json.RawMessage
	for i := top; i >= 0 && len(out) < limit; i-- {
		out = append(out, rr.events[i].JSON())
	}
	writeJSON(w, 200, map[string]any{"origin": r.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": out})
}

func (r *remote) serveProfile(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	p, ok := r.profiles[req.URL.Query().Get("user_id")]
	r.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]string{"errcode": "M_NOT_FOUND", "error": "no such user"})
		return
	}
	if f := req.URL.Query().Get("field"); f != "" {
		writeJSON(w, 200, map[string]string{f: p[f]})
		return
	}
	writeJSON(w, 200, p)
}

func (r *remote) serveDirectory(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	roomID, ok := r.aliases[req.URL.Query().Get("room_alias")]
	r.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]string{"errcode": "M_NOT_FOUND", "error": "no such alias"})
		return
	}
	writeJSON(w, 200, map[string]any{"room_id": roomID, "servers": []string{r.name}})
}

func (r *remote) servePublicRooms(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	var chunk []map[string]any
	for id, rr := range r.rooms {
		if rr.joinRule() == "public" {
			chunk = append(chunk, map[string]any{"room_id": id, "num_joined_members": 1, "world_readable": false, "guest_can_join": false, "name": "remote room"})
		}
	}
	r.mu.Unlock()
	var body struct {
		Filter struct {
			Term string `json:"generic_search_term"`
		} `json:"filter"`
	}
	if req.Method == http.MethodPost {
		_ = json.Unmarshal(fedRequest(req).Content(), &body)
		if body.Filter.Term == "nothing matches this" {
			chunk = nil
		}
	}
	if chunk == nil {
		chunk = []map[string]any{}
	}
	writeJSON(w, 200, map[string]any{"chunk": chunk, "total_room_count_estimate": len(chunk)})
}

func (r *remote) serveHierarchy(w http.ResponseWriter, req *http.Request) {
	rr := r.roomOf(w, req)
	if rr == nil {
		return
	}
	writeJSON(w, 200, map[string]any{"room": map[string]any{"room_id": rr.roomID, "num_joined_members": 1, "world_readable": false,
		"guest_can_join": false, "join_rule": rr.joinRule(), "children_state": []any{}}, "children": []any{}, "inaccessible_children": []any{}})
}

func (r *remote) serveDevices(w http.ResponseWriter, req *http.Request) {
	user := chi.URLParam(req, "userID")
	r.mu.Lock()
	devs, ok := r.devices[user]
	r.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]string{"errcode": "M_NOT_FOUND", "error": "no such user"})
		return
	}
	writeJSON(w, 200, map[string]any{"user_id": user, "stream_id": 7, "devices": devs})
}

func (r *remote) serveKeysQuery(w http.ResponseWriter, req *http.Request) {
	var body struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	_ = json.Unmarshal(fedRequest(req).Content(), &body)
	out := map[string]any{}
	for user := range body.DeviceKeys {
		out[user] = map[string]any{"DEV1": map[string]any{"user_id": user, "device_id": "DEV1", "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
			"keys": map[string]string{"ed25519:DEV1": "a2V5IG9mIHRoZSBkZXZpY2U"}}}
	}
	// A user of another server in the answer must be ignored.
	out["@intruder:elsewhere.test"] = map[string]any{"X": map[string]any{"user_id": "@intruder:elsewhere.test", "device_id": "X"}}
	writeJSON(w, 200, map[string]any{"device_keys": out})
}

func (r *remote) serveKeysClaim(w http.ResponseWriter, req *http.Request) {
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	_ = json.Unmarshal(fedRequest(req).Content(), &body)
	out := map[string]any{}
	for user, devices := range body.OneTimeKeys {
		m := map[string]any{}
		for dev, alg := range devices {
			m[dev] = map[string]any{alg + ":AAAA": map[string]any{"key": "b25lLXRpbWUga2V5"}}
		}
		out[user] = m
	}
	writeJSON(w, 200, map[string]any{"one_time_keys": out})
}

func rawEvents(evs []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.JSON())
	}
	return out
}

// memKeyDB is the remote's key cache (gomatrixserverlib's KeyDatabase).
type memKeyDB struct {
	mu   sync.Mutex
	keys map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult
}

func (m *memKeyDB) FetcherName() string { return "memory" }

func (m *memKeyDB) FetchKeys(_ context.Context, reqs map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	for req := range reqs {
		if res, ok := m.keys[req]; ok {
			out[req] = res
		}
	}
	return out, nil
}

func (m *memKeyDB) StoreKeys(_ context.Context, res map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range res {
		m.keys[k] = v
	}
	return nil
}

// remoteRoom is a room a remote holds: a linear history and the state
// after its last event.
type remoteRoom struct {
	t       testing.TB
	verImpl gomatrixserverlib.IRoomVersion
	roomID  string
	creator string
	events  []gomatrixserverlib.PDU
	state   map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	last    gomatrixserverlib.PDU
}

// newRoom creates a room on r: create, the creator's join, power levels,
// join rules (allow names rooms a restricted join may come from), history
// visibility and a name.
func (r *remote) newRoom(version, joinRule string, allow ...string) *remoteRoom {
	t := r.t
	t.Helper()
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	rr := &remoteRoom{t: t, verImpl: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}, creator: r.user("ron")}
	createContent := map[string]any{"room_version": version}
	switch version {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10":
		createContent["creator"] = rr.creator
	}
	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		roomID = "!" + randomLetters(t, 10) + ":" + r.name
	}
	empty := ""
	create := r.sign(verImpl, &gomatrixserverlib.ProtoEvent{SenderID: rr.creator, RoomID: roomID, Type: spec.MRoomCreate,
		StateKey: &empty, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: mustJSON(t, createContent)})
	rr.roomID = create.RoomID().String()
	rr.apply(create)
	rr.add(r, rr.creator, spec.MRoomMember, &rr.creator, map[string]any{"membership": "join"})
	users := map[string]any{rr.creator: 100}
	if verImpl.PrivilegedCreators() {
		users = map[string]any{}
	}
	rr.add(r, rr.creator, spec.MRoomPowerLevels, &empty, map[string]any{"users": users, "users_default": 0, "events_default": 0,
		"state_default": 50, "invite": 0, "ban": 50, "kick": 50, "redact": 50})
	jr := map[string]any{"join_rule": joinRule}
	if len(allow) > 0 {
		var a []map[string]string
		for _, id := range allow {
			a = append(a, map[string]string{"type": "m.room_membership", "room_id": id})
		}
		jr["allow"] = a
	}
	rr.add(r, rr.creator, spec.MRoomJoinRules, &empty, jr)
	rr.add(r, rr.creator, spec.MRoomHistoryVisibility, &empty, map[string]any{"history_visibility": "shared"})
	rr.add(r, rr.creator, spec.MRoomName, &empty, map[string]any{"name": "remote room " + version})
	r.mu.Lock()
	r.rooms[rr.roomID] = rr
	r.mu.Unlock()
	return rr
}

func (r *remote) sign(verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	r.t.Helper()
	pe.Version = verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), spec.ServerName(r.name), r.keyID, r.key)
	if err != nil {
		r.t.Fatalf("build %s: %v", pe.Type, err)
	}
	return ev
}

// send adds an event of the remote's user to its room (under its lock).
func (r *remote) send(rr *remoteRoom, sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	r.mu.Lock()
	defer r.mu.Unlock()
	return rr.add(r, sender, typ, stateKey, content)
}

func (rr *remoteRoom) apply(ev gomatrixserverlib.PDU) {
	rr.events = append(rr.events, ev)
	rr.last = ev
	if sk := ev.StateKey(); sk != nil {
		rr.state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
	}
}

func (rr *remoteRoom) joinRule() string {
	ev := rr.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomJoinRules}]
	if ev == nil {
		return ""
	}
	var c struct {
		JoinRule string `json:"join_rule"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.JoinRule
}

// proto fills in prev_events (the last event), depth and auth_events.
func (rr *remoteRoom) proto(sender, typ string, stateKey *string, content any) *gomatrixserverlib.ProtoEvent {
	rr.t.Helper()
	pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: rr.roomID, Type: typ, StateKey: stateKey,
		PrevEvents: []string{rr.last.EventID()}, Depth: rr.last.Depth() + 1, Content: mustJSON(rr.t, content), Version: rr.verImpl}
	provider, err := gomatrixserverlib.NewAuthEvents(rr.stateEvents())
	if err != nil {
		rr.t.Fatal(err)
	}
	eb := rr.verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		rr.t.Fatal(err)
	}
	pe.AuthEvents = eb.AuthEvents
	return pe
}

// add builds an event of r on the room's last event and applies it.
func (rr *remoteRoom) add(r *remote, sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	rr.t.Helper()
	ev := r.sign(rr.verImpl, rr.proto(sender, typ, stateKey, content))
	rr.apply(ev)
	return ev
}

func (rr *remoteRoom) stateEvents() []gomatrixserverlib.PDU {
	var out []gomatrixserverlib.PDU
	for _, ev := range rr.state {
		out = append(out, ev)
	}
	slices.SortFunc(out, func(a, b gomatrixserverlib.PDU) int { return int(a.Depth() - b.Depth()) })
	return out
}

// stateBefore replays the history up to an event.
func (rr *remoteRoom) stateBefore(eventID string) ([]gomatrixserverlib.PDU, bool) {
	state := map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}
	for _, ev := range rr.events {
		if ev.EventID() == eventID {
			var out []gomatrixserverlib.PDU
			for _, s := range state {
				out = append(out, s)
			}
			return out, true
		}
		if sk := ev.StateKey(); sk != nil {
			state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
		}
	}
	return nil, false
}

// authChain is the auth chain of events (their auth events, recursively).
func (rr *remoteRoom) authChain(evs []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	byID := map[string]gomatrixserverlib.PDU{}
	for _, ev := range rr.events {
		byID[ev.EventID()] = ev
	}
	seen := map[string]bool{}
	var out []gomatrixserverlib.PDU
	queue := slices.Clone(evs)
	for len(queue) > 0 {
		ev := queue[0]
		queue = queue[1:]
		for _, id := range ev.AuthEventIDs() {
			if seen[id] || byID[id] == nil {
				continue
			}
			seen[id] = true
			out = append(out, byID[id])
			queue = append(queue, byID[id])
		}
	}
	return out
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func randomLetters(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 'a' + b[i]%26
	}
	return string(b)
}
