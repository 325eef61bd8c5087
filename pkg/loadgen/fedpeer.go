package loadgen

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer/peercore"
)

// Peer is a homeserver of the load generator's own for the federation
// scenarios: it has a signing key, serves its keys and a few federation
// endpoints over HTTPS on a loopback listener, and signs the events and
// requests it sends to the target. Everything protocol-level (event
// format, hashes, signatures, event IDs, X-Matrix) is gomatrixserverlib's.
type Peer struct {
	Name spec.ServerName
	id   peercore.Identity
	srv  *http.Server

	target     spec.ServerName // the server under load
	targetAddr string          // its federation listener, host:port
	hc         *http.Client
	txn        atomic.Int64

	mu    sync.Mutex
	rooms map[string]*PeerRoom // by room ID: rooms it serves joins for
}

// PeerSlot is a peer's name and the listener it will serve on, made
// before the target starts so the target's server-name map can name it.
type PeerSlot struct {
	Name     string       `json:"name"`
	Listener net.Listener `json:"-"`
	// TLS is the peer's server certificate (issued for Name).
	TLS *tls.Config `json:"-"`
}

// FederationTarget is what the federation scenarios need of the target.
type FederationTarget struct {
	// ServerName is the target's server name; Addr its federation
	// listener (host:port).
	ServerName string `json:"server_name"`
	Addr       string `json:"addr"`
	// ClientTLS trusts the target's federation certificate.
	ClientTLS *tls.Config `json:"-"`
	Peers     []PeerSlot  `json:"peers"`
}

// StartPeer serves a peer on its slot's listener, talking to the target.
func StartPeer(slot PeerSlot, target FederationTarget) (*Peer, error) {
	id, err := peercore.NewIdentity(spec.ServerName(slot.Name), "ed25519:lg")
	if err != nil {
		return nil, err
	}
	tlsCfg := target.ClientTLS.Clone()
	tlsCfg.ServerName = target.ServerName
	p := &Peer{Name: id.Name, id: id,
		target: spec.ServerName(target.ServerName), targetAddr: target.Addr, rooms: map[string]*PeerRoom{},
		hc: &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
			TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 16, ForceAttemptHTTP2: true}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/key/v2/server", p.serveKeys)
	mux.HandleFunc("PUT /_matrix/federation/v1/send/{txn}", p.federation(func(*http.Request) (any, int) {
		return map[string]any{"pdus": map[string]any{}}, http.StatusOK
	}))
	mux.HandleFunc("GET /_matrix/federation/v1/make_join/{room}/{user}", p.federation(p.serveMakeJoin))
	mux.HandleFunc("PUT /_matrix/federation/v2/send_join/{room}/{event}", p.federation(p.serveSendJoin))
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_UNRECOGNIZED", "error": "not served by the load generator's peer"})
	})
	p.srv = &http.Server{Handler: mux, TLSConfig: slot.TLS, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.ServeTLS(slot.Listener, "", "") }()
	return p, nil
}

// Close stops serving.
func (p *Peer) Close() error { return p.srv.Close() }

// User is a user ID on the peer.
func (p *Peer) User(local string) string { return "@" + local + ":" + string(p.Name) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (p *Peer) serveKeys(w http.ResponseWriter, _ *http.Request) {
	signed, err := p.id.KeyResponse(time.Now(), 24*time.Hour)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"errcode": "M_UNKNOWN", "error": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(signed)
}

// federation wraps a handler for requests that must come from the target
// (X-Matrix origin and destination; the signature is not checked: the
// peer measures the target, it does not defend itself).
func (p *Peer) federation(h func(*http.Request) (any, int)) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		_, origin, dest, _, _ := fclient.ParseAuthorization(req.Header.Get("Authorization"))
		if origin != p.target || dest != p.Name {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNAUTHORIZED", "error": "not from the target"})
			return
		}
		resp, status := h(req)
		writeJSON(w, status, resp)
	}
}

// request sends a signed federation request to the target and decodes a
// 200 answer into out.
func (p *Peer) request(ctx context.Context, method, path string, body, out any) error {
	hr, err := p.id.Request(ctx, method, p.target, p.targetAddr, path, body)
	if err != nil {
		return err
	}
	res, err := p.hc.Do(hr)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		var me MatrixError
		_ = json.Unmarshal(raw, &me)
		me.Status = res.StatusCode
		if me.Errcode == "" {
			me.Errcode = "HTTP_" + strconv.Itoa(res.StatusCode)
		}
		return &me
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// SendTransaction sends PDUs in one transaction and returns how many the
// target accepted (no error in its per-PDU results) and the first error.
func (p *Peer) SendTransaction(ctx context.Context, pdus []gomatrixserverlib.PDU) (int, error) {
	raws := make([]json.RawMessage, len(pdus))
	for i, ev := range pdus {
		raws[i] = ev.JSON()
	}
	txnID := "lg" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatInt(p.txn.Add(1), 10)
	var resp fclient.RespSend
	err := p.request(ctx, http.MethodPut, "/_matrix/federation/v1/send/"+txnID, map[string]any{
		"origin": p.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": raws, "edus": []any{},
	}, &resp)
	if err != nil {
		return 0, err
	}
	ok := 0
	var first error
	for _, ev := range pdus {
		r, found := resp.PDUs[ev.EventID()]
		switch {
		case !found:
			first = cmpErr(first, fmt.Errorf("no result for %s", ev.EventID()))
		case r.Error != "":
			first = cmpErr(first, fmt.Errorf("%s: %s", ev.EventID(), r.Error))
		default:
			ok++
		}
	}
	return ok, first
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// PeerRoom is a room as the peer holds it: its state and last event; the
// peer builds its events on the last one, one after another.
type PeerRoom struct {
	p       *Peer
	RoomID  string
	verImpl gomatrixserverlib.IRoomVersion
	state   map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	last    gomatrixserverlib.PDU
	// events are every event the peer made or learnt in the room, for
	// send_join's auth chain.
	events map[string]gomatrixserverlib.PDU
}

// Join joins userID (a user of the peer) to a room of the target with
// make_join and send_join v2.
func (p *Peer) Join(ctx context.Context, roomID, userID string) (*PeerRoom, error) {
	q := url.Values{}
	for v := range gomatrixserverlib.RoomVersions() {
		q.Add("ver", string(v))
	}
	var made struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + "?" + q.Encode()
	if err := p.request(ctx, http.MethodGet, path, nil, &made); err != nil {
		return nil, fmt.Errorf("make_join: %w", err)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(made.RoomVersion))
	if err != nil {
		return nil, err
	}
	pe, err := federation.DecodeProtoEvent(made.Event)
	if err != nil {
		return nil, fmt.Errorf("make_join template: %w", err)
	}
	join, err := p.id.Sign(verImpl, pe)
	if err != nil {
		return nil, err
	}
	var resp struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := p.request(ctx, http.MethodPut, "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(join.EventID()),
		json.RawMessage(join.JSON()), &resp); err != nil {
		return nil, fmt.Errorf("send_join: %w", err)
	}
	rr := &PeerRoom{p: p, RoomID: roomID, verImpl: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{},
		events: map[string]gomatrixserverlib.PDU{}}
	for _, raw := range resp.State {
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("send_join state: %w", err)
		}
		rr.state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	rr.apply(join)
	p.mu.Lock()
	p.rooms[roomID] = rr
	p.mu.Unlock()
	return rr, nil
}

// apply makes ev the room's last event (and state).
func (rr *PeerRoom) apply(ev gomatrixserverlib.PDU) {
	if sk := ev.StateKey(); sk != nil {
		rr.state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
	}
	rr.events[ev.EventID()] = ev
	rr.last = ev
}

// Add builds, signs and applies an event on the room's last event, with
// auth events from the room's state.
func (rr *PeerRoom) Add(sender, typ string, stateKey *string, content any) (gomatrixserverlib.PDU, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: rr.RoomID, Type: typ, StateKey: stateKey,
		PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: raw, Version: rr.verImpl}
	if rr.last != nil {
		pe.PrevEvents, pe.Depth = []string{rr.last.EventID()}, rr.last.Depth()+1
		if err := peercore.AddAuthEvents(rr.verImpl, pe, rr.state); err != nil {
			return nil, err
		}
	}
	ev, err := rr.p.id.Sign(rr.verImpl, pe)
	if err != nil {
		return nil, err
	}
	rr.apply(ev)
	return ev, nil
}

// Message adds a text message.
func (rr *PeerRoom) Message(sender, body string) (gomatrixserverlib.PDU, error) {
	return rr.Add(sender, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body})
}

// NewRoom creates a public room on the peer (create, the creator's join,
// power levels, join rules, history visibility) whose joins it serves.
func (p *Peer) NewRoom(version, creator string) (*PeerRoom, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, err
	}
	rr := &PeerRoom{p: p, verImpl: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{},
		events: map[string]gomatrixserverlib.PDU{}}
	content := map[string]any{"room_version": version}
	if !verImpl.PrivilegedCreators() {
		content["creator"] = creator
	}
	if !verImpl.DomainlessRoomIDs() {
		rr.RoomID = "!lg" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":" + string(p.Name)
	}
	empty := ""
	create, err := rr.Add(creator, spec.MRoomCreate, &empty, content)
	if err != nil {
		return nil, err
	}
	rr.RoomID = create.RoomID().String()
	users := map[string]any{creator: 100}
	if verImpl.PrivilegedCreators() {
		users = map[string]any{}
	}
	for _, s := range []struct {
		typ, key string
		content  any
	}{
		{spec.MRoomMember, creator, map[string]any{"membership": "join"}},
		{spec.MRoomPowerLevels, "", map[string]any{"users": users, "users_default": 0, "events_default": 0,
			"state_default": 50, "invite": 0, "ban": 50, "kick": 50, "redact": 50}},
		{spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"}},
		{spec.MRoomHistoryVisibility, "", map[string]any{"history_visibility": "shared"}},
	} {
		key := s.key
		if _, err := rr.Add(creator, s.typ, &key, s.content); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	p.rooms[rr.RoomID] = rr
	p.mu.Unlock()
	return rr, nil
}

// serveMakeJoin answers make_join for a room of the peer's.
func (p *Peer) serveMakeJoin(req *http.Request) (any, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rr := p.rooms[req.PathValue("room")]
	user := req.PathValue("user")
	if rr == nil {
		return map[string]string{"errcode": "M_NOT_FOUND", "error": "unknown room"}, http.StatusNotFound
	}
	if !strings.HasSuffix(user, ":"+string(p.target)) {
		return map[string]string{"errcode": "M_FORBIDDEN", "error": "user is not of the requesting server"}, http.StatusForbidden
	}
	raw, _ := json.Marshal(map[string]any{"membership": "join"})
	pe := &gomatrixserverlib.ProtoEvent{SenderID: user, RoomID: rr.RoomID, Type: spec.MRoomMember, StateKey: &user,
		PrevEvents: []string{rr.last.EventID()}, Depth: rr.last.Depth() + 1, Content: raw, Version: rr.verImpl}
	if err := peercore.AddAuthEvents(rr.verImpl, pe, rr.state); err != nil {
		return map[string]string{"errcode": "M_UNKNOWN", "error": err.Error()}, http.StatusInternalServerError
	}
	return map[string]any{"room_version": rr.verImpl.Version(), "event": pe}, http.StatusOK
}

// serveSendJoin takes the target's join into the room (trusting it: the
// peer measures, it does not check) and answers with the state before it
// and its auth chain.
func (p *Peer) serveSendJoin(req *http.Request) (any, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rr := p.rooms[req.PathValue("room")]
	if rr == nil {
		return map[string]string{"errcode": "M_NOT_FOUND", "error": "unknown room"}, http.StatusNotFound
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()}, http.StatusBadRequest
	}
	join, err := rr.verImpl.NewEventFromUntrustedJSON(body)
	if err != nil {
		return map[string]string{"errcode": "M_BAD_JSON", "error": err.Error()}, http.StatusBadRequest
	}
	state := make([]json.RawMessage, 0, len(rr.state))
	var chain []json.RawMessage
	seen := map[string]bool{}
	var walk func(ids []string)
	walk = func(ids []string) {
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			if ev := rr.events[id]; ev != nil {
				chain = append(chain, ev.JSON())
				walk(ev.AuthEventIDs())
			}
		}
	}
	for _, ev := range rr.state {
		state = append(state, ev.JSON())
		walk(ev.AuthEventIDs())
	}
	walk(join.AuthEventIDs())
	rr.apply(join)
	return map[string]any{"origin": p.Name, "state": state, "auth_chain": chain, "members_omitted": false,
		"servers_in_room": []string{string(p.Name)}}, http.StatusOK
}
