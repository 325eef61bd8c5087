package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

const remoteName = "remote.test"

// remoteNode is another homeserver's key-server: a peer whose keys are
// served over HTTPS by its own key-server's federation routes; the test
// signs events with its keys.
type remoteNode struct {
	keys    keyserverv1.ServerKeyServiceClient
	handler http.Handler
}

func (*remoteNode) serverName() string                { return remoteName }
func (n *remoteNode) federationHandler() http.Handler { return n.handler }

// newRemoteNode starts remote.test's key-server.
func newRemoteNode(t *testing.T) *remoteNode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rks, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{
		Logger: testLogger(t).Named("remote-keyserver"), ServerName: remoteName, DatabaseURL: testkit.Postgres(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rks.Close)
	rconn, err := rpc.Dial(serveGRPC(t, rks.RegisterGRPC))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rconn.Close() })
	router := chi.NewRouter()
	rks.RegisterFederationHTTP(router)
	return &remoteNode{keys: keyserverv1.NewServerKeyServiceClient(rconn), handler: router}
}

// signingKey is a key-server's current key, private part included.
func signingKey(t *testing.T, keys keyserverv1.ServerKeyServiceClient) (spec.ServerName, gomatrixserverlib.KeyID, ed25519.PrivateKey) {
	t.Helper()
	resp, err := keys.SigningKey(context.Background(), &keyserverv1.SigningKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return spec.ServerName(resp.GetServerName()), gomatrixserverlib.KeyID(resp.GetKeyId()), ed25519.NewKeyFromSeed(resp.GetSeed())
}

// buildAs builds an event as h.build does, but signed by origin with key
// (another server, or an old key of this one).
func (h *harness) buildAs(origin spec.ServerName, keyID gomatrixserverlib.KeyID, key ed25519.PrivateKey, ts time.Time,
	roomID, sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	h.t.Helper()
	info := h.roomInfo(roomID)
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(info.GetRoomVersion()))
	prevs := info.GetForwardExtremities()
	var depth int64
	for _, p := range prevs {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(p, h.event(p).GetEventJson(), false)
		if err != nil {
			h.t.Fatal(err)
		}
		depth = max(depth, pdu.Depth())
	}
	st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID})
	if err != nil {
		h.t.Fatal(err)
	}
	var state []gomatrixserverlib.PDU
	for _, ev := range st.GetState() {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(ev.GetEventId(), ev.GetEventJson(), false)
		if err != nil {
			h.t.Fatal(err)
		}
		state = append(state, pdu)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		h.t.Fatal(err)
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: roomID, Type: typ, StateKey: stateKey, PrevEvents: prevs,
		Depth: depth + 1, Content: mustJSON(h.t, content), Version: verImpl,
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		h.t.Fatal(err)
	}
	ev, err := eb.Build(ts, origin, keyID, key)
	if err != nil {
		h.t.Fatal(err)
	}
	return ev
}

func signedBy(t *testing.T, ev gomatrixserverlib.PDU) string {
	t.Helper()
	var obj struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(ev.JSON(), &obj); err != nil {
		t.Fatal(err)
	}
	var out []string
	for server, sigs := range obj.Signatures {
		for id := range sigs {
			out = append(out, server+" "+id)
		}
	}
	return strings.Join(out, ",")
}

// TestOtherServersAndRotation: events signed by another server verify
// through the key-server (which fetches that server's keys over HTTPS),
// before and after that server rotates its key; a forged one is INVALID.
// After this server rotates its key, an event signed with the old key
// before the rotation is still accepted, and new events carry the new key
// once the room-server has asked for it.
func TestOtherServersAndRotation(t *testing.T) {
	remote := newRemoteNode(t)
	h := newHarness(t, nil, remote)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	origin, remoteKey1, remotePriv1 := signingKey(t, remote.keys)
	eve := "@eve:" + remoteName

	join := h.buildAs(origin, remoteKey1, remotePriv1, time.Now(), roomID, eve, spec.MRoomMember, ptr(eve), map[string]any{"membership": "join"})
	h.inputOne(join, accepted)
	hello := h.buildAs(origin, remoteKey1, remotePriv1, time.Now(), roomID, eve, "m.room.message", nil, map[string]any{"body": "hello from remote"})
	// Built now, sent after remote.test has rotated its key.
	delayed := h.buildAs(origin, remoteKey1, remotePriv1, time.Now(), roomID, eve, "m.room.message", nil, map[string]any{"body": "delayed"})
	h.inputOne(hello, accepted)

	// Signed with a key remote.test does not have, under its key ID.
	_, wrong, _ := ed25519.GenerateKey(nil)
	forged := h.buildAs(origin, remoteKey1, wrong, time.Now(), roomID, eve, "m.room.message", nil, map[string]any{"body": "forged"})
	if st := h.input(roomserverv1.InputKind_INPUT_KIND_NEW, forged)[0].GetStatus(); st != invalidSt {
		t.Fatalf("forged remote event: %s, want INVALID", st)
	}

	// remote.test rotates: its new key is fetched for its new events, and
	// an event signed with its old key before the rotation still verifies.
	if _, err := remote.keys.RotateKey(h.ctx, &keyserverv1.RotateKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	_, remoteKey2, remotePriv2 := signingKey(t, remote.keys)
	after := h.buildAs(origin, remoteKey2, remotePriv2, time.Now(), roomID, eve, "m.room.message", nil, map[string]any{"body": "new key"})
	h.inputOne(after, accepted)
	h.inputOne(delayed, accepted)

	// This server rotates: an event it signed before still verifies.
	_, localKey1, _ := signingKey(t, h.sks)
	ext := h.roomInfo(roomID).GetForwardExtremities()
	old := h.build(roomID, alice, "m.room.message", nil, map[string]any{"body": "signed before the rotation"}, ext, ext[0])
	if got := signedBy(t, old); got != testServer+" "+string(localKey1) {
		t.Fatalf("event signed by %s, want %s", got, localKey1)
	}
	rot, err := h.sks.RotateKey(h.ctx, &keyserverv1.RotateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.inputOne(old, accepted)
	// The room-server signs with the key it holds until it asks the
	// key-server again (TestLocalSigningAcrossRotation); here it asks now.
	h.svc.signer.Key.Forget()
	id := h.mustSend(roomID, alice, message(t, "signed after the rotation"))
	verImpl := gomatrixserverlib.MustGetRoomVersion("11")
	pdu, err := verImpl.NewEventFromTrustedJSON(h.event(id).GetEventJson(), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := signedBy(t, pdu); got != testServer+" "+rot.GetKeyId() {
		t.Fatalf("new event signed by %s, want the new key %s", got, rot.GetKeyId())
	}
	if err := gomatrixserverlib.VerifyEventSignatures(h.ctx, pdu, h.svc.verifier, userIDForSender); err != nil {
		t.Fatalf("new event does not verify: %v", err)
	}
}
