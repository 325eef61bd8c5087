package roomserver

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// TestNewRun: a run of NEW events of one room (a federation transaction's
// PDUs) is looked up once and stored in one transaction, and each event
// gets the result it would get alone: an event stored before and one given
// twice are duplicates, a refused event in the middle is rejected while
// the events after it are accepted, an event given before its prev event
// misses it (nothing stored) while the prev event is accepted, and a
// target coming after its redaction in the run is stored redacted.
func TestNewRun(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	h.mustSend(roomID, bob, member(t, bob, "join"))
	x := h.mustSend(roomID, alice, message(t, "x"))
	msg := func(sender, body string, prev string) gomatrixserverlib.PDU {
		return h.build(roomID, sender, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body}, []string{prev}, x)
	}
	m1 := msg(bob, "m1", x)
	// Bob (power 0) may not change the power levels.
	bad := h.build(roomID, bob, spec.MRoomPowerLevels, ptr(""), plContent("11", map[string]int{alice: 100, bob: 100}), []string{m1.EventID()}, x)
	m2 := msg(alice, "m2", m1.EventID())
	m3 := msg(bob, "m3", m2.EventID())
	m4 := msg(alice, "m4", m3.EventID())
	// A redaction and its target, both on m3; the run gives the
	// redaction first.
	m5 := msg(alice, "secret m5", m3.EventID())
	red := h.build(roomID, alice, spec.MRoomRedaction, nil, map[string]any{"redacts": m5.EventID()}, []string{m3.EventID()}, x)
	m6 := h.build(roomID, bob, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "m6"}, []string{m5.EventID(), red.EventID()}, x)

	xPDU := h.event(x)
	if xPDU == nil {
		t.Fatal("x not stored")
	}
	xEv, err := gomatrixserverlib.MustGetRoomVersion("11").NewEventFromTrustedJSONWithEventID(x, xPDU.GetEventJson(), false)
	if err != nil {
		t.Fatal(err)
	}
	run := []gomatrixserverlib.PDU{xEv, m1, m1, bad, m2, m4, m3, red, m5, m6}
	res := h.input(roomserverv1.InputKind_INPUT_KIND_NEW, run...)
	want := []struct {
		name   string
		status roomserverv1.InputStatus
	}{
		{"x (stored before)", duplicate}, {"m1", accepted}, {"m1 again", duplicate}, {"bad", rejected}, {"m2", accepted},
		{"m4 (before its prev)", missing}, {"m3", accepted}, {"redaction", accepted}, {"m5", accepted}, {"m6", accepted},
	}
	if len(res) != len(run) {
		t.Fatalf("%d results for %d events", len(res), len(run))
	}
	for i, w := range want {
		if res[i].GetStatus() != w.status {
			t.Errorf("%s: %s (%s), want %s", w.name, res[i].GetStatus(), res[i].GetReason(), w.status)
		}
		if res[i].GetEventId() != run[i].EventID() {
			t.Errorf("%s: result for %s", w.name, res[i].GetEventId())
		}
	}
	if ids := res[5].GetMissingEventIds(); !slices.Equal(ids, []string{m3.EventID()}) {
		t.Errorf("m4 misses %v, want m3", ids)
	}
	if h.event(m4.EventID()) != nil {
		t.Error("m4 was stored though its prev event was missing")
	}
	if ev := h.event(bad.EventID()); ev == nil || !ev.GetRejected() {
		t.Errorf("bad stored as %+v, want rejected", ev)
	}
	if ev := h.event(m5.EventID()); ev == nil || strings.Contains(string(ev.GetEventJson()), "secret") {
		t.Errorf("m5 stored as %+v, want redacted", ev)
	}
	if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, []string{m6.EventID()}) {
		t.Errorf("extremities %v, want m6", ext)
	}
	// Given again now that m3 is stored, m4 is accepted on it.
	h.inputOne(m4, accepted)
	if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(sortedIDs(ext...), sortedIDs(m6.EventID(), m4.EventID())) {
		t.Errorf("extremities %v, want m6 and m4", ext)
	}
	// Create, alice's join, power levels, join rules, history visibility,
	// bob's join, x, then the run's accepted events in order, then m4.
	msgs := h.waitPublished(roomID, 7+7)
	var got []string
	for _, m := range msgs[7:] {
		got = append(got, m.out.GetEventId())
	}
	if wantIDs := []string{m1.EventID(), m2.EventID(), m3.EventID(), red.EventID(), m5.EventID(), m6.EventID(), m4.EventID()}; !slices.Equal(got, wantIDs) {
		t.Errorf("published %v, want %v", got, wantIDs)
	}
}

// TestSignaturesChecked: InputEvent.signatures_checked spares an outlier
// (a send_join answer's state, checked by the federation-sender) the
// second signature check, and nothing else: a NEW event with it, or an
// outlier without it, is still refused for a forged signature, and an
// outlier with it is still parsed (its content hash checked). Only the
// allowed caller (Deps.SignaturesCheckedCallers) is believed, named the
// same way in both shapes: by its certificate over mutual TLS, by the name
// it dialled with in-process. From any other caller, or an unnamed one
// (plain gRPC), the flag is ignored and the forged outlier refused.
func TestSignaturesChecked(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	head := h.roomInfo(roomID).GetForwardExtremities()
	forge := func(ev gomatrixserverlib.PDU) []byte {
		var obj map[string]any
		if err := json.Unmarshal(ev.JSON(), &obj); err != nil {
			t.Fatal(err)
		}
		for _, keys := range obj["signatures"].(map[string]any) {
			for id := range keys.(map[string]any) {
				keys.(map[string]any)[id] = base64.RawStdEncoding.EncodeToString(make([]byte, ed25519.SignatureSize))
			}
		}
		return mustJSON(t, obj)
	}
	topic := h.build(roomID, alice, spec.MRoomTopic, ptr(""), map[string]any{"topic": "forged"}, head, head[0])
	forged := forge(topic)

	// The room-server's handlers on a server with mutual TLS and an
	// in-process listener, as in the split and all-in-one shapes.
	ca := testkit.NewCA(t)
	creds := func(names ...string) *rpc.Credentials {
		t.Helper()
		cert, key := ca.Issue(t, names...)
		c, err := rpc.LoadCredentials(rpc.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.CertFile})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	g := rpc.NewServer(testLogger(t).Named("grpc"), creds("room-server", "127.0.0.1").ServerOption())
	h.svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inProc := rpc.ListenInProcess()
	go func() { _ = g.Serve(lis) }()
	go func() { _ = g.Serve(inProc) }()
	t.Cleanup(g.Stop)
	client := func(conn *grpc.ClientConn, err error) roomserverv1.RoomServiceClient {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return roomserverv1.NewRoomServiceClient(conn)
	}
	trusted := map[string]roomserverv1.RoomServiceClient{
		"TLS " + fedSenderCaller:        client(rpc.DialTLS(lis.Addr().String(), creds(fedSenderCaller))),
		"in-process " + fedSenderCaller: client(rpc.DialInProcess(inProc, fedSenderCaller)),
	}
	untrusted := map[string]roomserverv1.RoomServiceClient{
		"TLS client-api":        client(rpc.DialTLS(lis.Addr().String(), creds("client-api"))),
		"in-process client-api": client(rpc.DialInProcess(inProc, "client-api")),
		"in-process, unnamed":   client(rpc.DialInProcess(inProc, "")),
		"plain, unnamed":        h.rs,
	}

	input := func(rs roomserverv1.RoomServiceClient, kind roomserverv1.InputKind, checked bool, raw []byte) *roomserverv1.InputEventResult {
		t.Helper()
		resp, err := rs.InputEvents(h.ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{
			RoomVersion: "11", EventJson: raw, Kind: kind, SignaturesChecked: checked}}})
		if err != nil || len(resp.GetResults()) != 1 {
			t.Fatalf("InputEvents: %v", err)
		}
		return resp.GetResults()[0]
	}
	for name, rs := range untrusted {
		if r := input(rs, roomserverv1.InputKind_INPUT_KIND_OUTLIER, true, forged); r.GetStatus() != invalidSt {
			t.Errorf("%s: OUTLIER, forged, signatures_checked: %s %s, want INVALID", name, r.GetStatus(), r.GetReason())
		}
	}
	for name, rs := range trusted {
		if r := input(rs, roomserverv1.InputKind_INPUT_KIND_NEW, true, forged); r.GetStatus() != invalidSt {
			t.Errorf("%s: NEW, forged, signatures_checked: %s %s, want INVALID", name, r.GetStatus(), r.GetReason())
		}
		if r := input(rs, roomserverv1.InputKind_INPUT_KIND_OUTLIER, false, forged); r.GetStatus() != invalidSt {
			t.Errorf("%s: OUTLIER, forged: %s %s, want INVALID", name, r.GetStatus(), r.GetReason())
		}
		if r := input(rs, roomserverv1.InputKind_INPUT_KIND_OUTLIER, true, []byte(`{"type":`)); r.GetStatus() != invalidSt {
			t.Errorf("%s: OUTLIER, unparseable, signatures_checked: %s %s, want INVALID", name, r.GetStatus(), r.GetReason())
		}
	}
	if h.event(topic.EventID()) != nil {
		t.Fatal("the forged event was stored")
	}
	// The federation-sender vouches for the signatures: the outlier is
	// taken (once it is stored, a second input is a no-op, so one caller
	// per forged event).
	for name, rs := range trusted {
		ev := forge(h.build(roomID, alice, spec.MRoomTopic, ptr(""), map[string]any{"topic": name}, head, head[0]))
		if r := input(rs, roomserverv1.InputKind_INPUT_KIND_OUTLIER, true, ev); r.GetStatus() != accepted {
			t.Errorf("%s: OUTLIER, signatures_checked: %s %s, want ACCEPTED", name, r.GetStatus(), r.GetReason())
		}
	}
}

// BenchmarkNewRun inputs runs of 50 NEW messages on one another (a
// federation transaction's PDUs of a room) and reports the room-server
// process's CPU per event (PostgreSQL's is not counted).
func BenchmarkNewRun(b *testing.B) {
	h := newHarness(b, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	x := h.mustSend(roomID, alice, message(b, "x"))
	const run = 50
	runs := make([][]gomatrixserverlib.PDU, b.N)
	prev := x
	for i := range runs {
		for j := range run {
			ev := h.build(roomID, alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": fmt.Sprint(i, j)}, []string{prev}, x)
			runs[i] = append(runs[i], ev)
			prev = ev.EventID()
		}
	}
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	for i := range b.N {
		for _, r := range h.input(roomserverv1.InputKind_INPUT_KIND_NEW, runs[i]...) {
			if r.GetStatus() != accepted {
				b.Fatalf("%s %s", r.GetStatus(), r.GetReason())
			}
		}
	}
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / time.Duration(b.N*run)
	b.ReportMetric(float64(cpu.Microseconds()), "cpu-µs/event")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*run), "µs/event")
}
