package fedpeer

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
)

// Request is a signed (X-Matrix) request to the Myelin server.
type Request struct {
	Method, Path string
	// Body is marshalled as JSON; Raw, when set, is sent as it is.
	Body any
	Raw  []byte
	// Tamper changes the signed request before it is sent.
	Tamper func(*http.Request)
	// Destination overrides Target in the signature.
	Destination spec.ServerName
	// Unsigned sends no Authorization header.
	Unsigned bool
	// Addr overrides TargetAddr (another replica's listener).
	Addr string
}

// Do sends a request to the Myelin federation listener and returns the
// status and body.
func (s *Server) Do(req Request) (int, []byte) {
	s.t.Helper()
	status, _, body := s.DoWithHeaders(req)
	return status, body
}

// DoWithHeaders is Do, with the response's headers.
func (s *Server) DoWithHeaders(req Request) (int, http.Header, []byte) {
	s.t.Helper()
	dest := req.Destination
	if dest == "" {
		dest = s.Target
	}
	addr := s.TargetAddr
	if req.Addr != "" {
		addr = req.Addr
	}
	content := req.Body
	if req.Raw != nil {
		content = json.RawMessage(req.Raw)
	}
	hr, err := s.Identity().Request(context.Background(), req.Method, dest, addr, req.Path, content)
	if err != nil {
		s.t.Fatal(err)
	}
	if req.Raw != nil {
		// As it is, not as SetContent re-encoded it.
		hr.Body = io.NopCloser(strings.NewReader(string(req.Raw)))
		hr.ContentLength = int64(len(req.Raw))
	}
	if req.Unsigned {
		hr.Header.Del("Authorization")
	}
	if req.Tamper != nil {
		req.Tamper(hr)
	}
	res, err := s.Client.Do(hr)
	if err != nil {
		s.t.Fatalf("%s %s: %v", req.Method, req.Path, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, body
}

// Get and Put are Do's common cases.
func (s *Server) Get(path string) (int, []byte) {
	s.t.Helper()
	return s.Do(Request{Method: "GET", Path: path})
}

func (s *Server) Put(path string, body any) (int, []byte) {
	s.t.Helper()
	return s.Do(Request{Method: "PUT", Path: path, Body: body})
}

// Send sends a transaction with a fresh ID and returns the status and
// the per-PDU results.
func (s *Server) Send(pdus []json.RawMessage, edus ...gomatrixserverlib.EDU) (int, map[string]fclient.PDUResult) {
	s.t.Helper()
	return s.SendTxn(s.NextTxn(), pdus, edus...)
}

// NextTxn is a fresh transaction ID.
func (s *Server) NextTxn() string { return "txn" + strconv.FormatInt(s.txn.Add(1), 10) }

// SendTxn sends a transaction with the given ID.
func (s *Server) SendTxn(txnID string, pdus []json.RawMessage, edus ...gomatrixserverlib.EDU) (int, map[string]fclient.PDUResult) {
	s.t.Helper()
	return s.SendTxnAt("", txnID, pdus, edus...)
}

// SendTxnAt sends a transaction to a listener (empty: TargetAddr).
func (s *Server) SendTxnAt(addr, txnID string, pdus []json.RawMessage, edus ...gomatrixserverlib.EDU) (int, map[string]fclient.PDUResult) {
	s.t.Helper()
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	status, body := s.Do(Request{Method: "PUT", Path: "/_matrix/federation/v1/send/" + txnID, Addr: addr, Body: map[string]any{
		"origin": s.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus, "edus": edus,
	}})
	var resp fclient.RespSend
	if status == 200 {
		if err := json.Unmarshal(body, &resp); err != nil {
			s.t.Fatalf("send: %s", body)
		}
	}
	return status, resp.PDUs
}

// AllVersions is every room version Myelin supports (make_join's ver).
var AllVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

// VerQuery is make_join's ver parameters for AllVersions.
func VerQuery() string {
	q := url.Values{}
	for _, v := range AllVersions {
		q.Add("ver", v)
	}
	return q.Encode()
}

// Learn records events the server got from elsewhere (send_join's state
// and auth chain).
func (s *Server) Learn(verImpl gomatrixserverlib.IRoomVersion, raws []json.RawMessage) []gomatrixserverlib.PDU {
	s.t.Helper()
	var out []gomatrixserverlib.PDU
	s.Mu.Lock()
	defer s.Mu.Unlock()
	for _, raw := range raws {
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil {
			s.t.Fatalf("event from Myelin: %v: %s", err, raw)
		}
		if s.Events[ev.EventID()] == nil {
			s.Events[ev.EventID()] = &Event{PDU: ev}
		}
		out = append(out, ev)
	}
	return out
}

// Template turns a make_* answer's event into a proto-event.
func Template(t interface {
	Helper()
	Fatalf(string, ...any)
}, raw json.RawMessage) *gomatrixserverlib.ProtoEvent {
	t.Helper()
	pe, err := federation.DecodeProtoEvent(raw)
	if err != nil {
		t.Fatalf("template: %v", err)
	}
	return pe
}

// Sign builds and signs a proto-event as the server.
func (s *Server) Sign(verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	s.t.Helper()
	ev, err := s.Identity().Sign(verImpl, pe)
	if err != nil {
		s.t.Fatal(err)
	}
	return ev
}

// MakeMembership asks for a make_join/make_leave/make_knock template and
// signs the event.
func (s *Server) MakeMembership(kind, roomID, userID string) (gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU) {
	s.t.Helper()
	path := "/_matrix/federation/v1/make_" + kind + "/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID)
	if kind != "leave" {
		path += "?" + VerQuery()
	}
	status, body := s.Get(path)
	if status != 200 {
		s.t.Fatalf("make_%s: %d %s", kind, status, body)
	}
	var resp struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		s.t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(resp.RoomVersion))
	return verImpl, s.Sign(verImpl, Template(s.t, resp.Event))
}

// Join joins userID to a room of the Myelin server (make_join, send_join
// v1 or v2) and returns the room as the server now holds it.
func (s *Server) Join(roomID, userID string, v1 bool) *Room {
	s.t.Helper()
	verImpl, join := s.MakeMembership("join", roomID, userID)
	version := "v2"
	if v1 {
		version = "v1"
	}
	status, body := s.SendMembership("join", version, roomID, join)
	if status != 200 {
		s.t.Fatalf("send_join: %d %s", status, body)
	}
	var resp struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
		Event     json.RawMessage   `json:"event"`
		Origin    spec.ServerName   `json:"origin"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		s.t.Fatal(err)
	}
	if resp.Origin != s.Target || len(resp.State) == 0 || len(resp.AuthChain) == 0 {
		s.t.Fatalf("send_join answer: origin %q, %d state, %d auth chain", resp.Origin, len(resp.State), len(resp.AuthChain))
	}
	s.Learn(verImpl, resp.AuthChain)
	state := s.Learn(verImpl, resp.State)
	signed := s.Learn(verImpl, []json.RawMessage{resp.Event})[0]
	if signed.EventID() != join.EventID() {
		s.t.Fatalf("send_join answered with event %s, sent %s", signed.EventID(), join.EventID())
	}
	rr := &Room{Server: s, RoomID: roomID, Version: verImpl, State: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}}
	for _, ev := range state {
		rr.State[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	rr.Apply(signed)
	s.Mu.Lock()
	s.Rooms[roomID] = rr
	s.Mu.Unlock()
	return rr
}

// SendMembership puts a signed membership event to send_<kind> (version
// "v1" or "v2") and returns the status and body (v1's [200, body]
// unwrapped).
func (s *Server) SendMembership(kind, version, roomID string, ev gomatrixserverlib.PDU) (int, []byte) {
	s.t.Helper()
	status, body := s.Put("/_matrix/federation/"+version+"/send_"+kind+"/"+url.PathEscape(roomID)+"/"+url.PathEscape(ev.EventID()), json.RawMessage(ev.JSON()))
	if status == 200 && version == "v1" && kind != "knock" { // send_knock has no [200, ...] form
		var wrapped []json.RawMessage
		if err := json.Unmarshal(body, &wrapped); err != nil || len(wrapped) != 2 || string(wrapped[0]) != "200" {
			s.t.Fatalf("send_%s v1 answer is not [200, {...}]: %s", kind, body)
		}
		body = wrapped[1]
	}
	return status, body
}
