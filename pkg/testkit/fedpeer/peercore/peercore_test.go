package peercore

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// An identity's key response verifies with the key it publishes; so do
// the events it signs (their redacted form) and its X-Matrix requests
// (the request object of the server-server API's "Request
// Authentication"). A message's auth events are the room's create event,
// power levels and the sender's membership, not the rest of the state.
func TestIdentity(t *testing.T) {
	id, err := NewIdentity("peer.test", "ed25519:t")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := id.KeyResponse(time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var keys gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	pub := ed25519.PublicKey(keys.VerifyKeys[id.KeyID].Key)
	if err := gomatrixserverlib.VerifyJSON(string(id.Name), id.KeyID, pub, raw); err != nil || keys.ServerName != id.Name {
		t.Fatalf("key response %s: %v", raw, err)
	}

	v11 := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV11)
	alice, empty := "@alice:peer.test", ""
	state := map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}
	var last gomatrixserverlib.PDU
	add := func(typ string, stateKey *string, content string) gomatrixserverlib.PDU {
		t.Helper()
		pe := &gomatrixserverlib.ProtoEvent{SenderID: alice, RoomID: "!r:peer.test", Type: typ, StateKey: stateKey,
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: []byte(content)}
		if last != nil {
			pe.PrevEvents, pe.Depth = []string{last.EventID()}, last.Depth()+1
			if err := AddAuthEvents(v11, pe, state); err != nil {
				t.Fatal(err)
			}
		}
		ev, err := id.Sign(v11, pe)
		if err != nil {
			t.Fatal(err)
		}
		if sk := ev.StateKey(); sk != nil {
			state[gomatrixserverlib.StateKeyTuple{EventType: typ, StateKey: *sk}] = ev
		}
		last = ev
		return ev
	}
	create := add(spec.MRoomCreate, &empty, `{"room_version":"11","creator":"@alice:peer.test"}`)
	join := add(spec.MRoomMember, &alice, `{"membership":"join"}`)
	pl := add(spec.MRoomPowerLevels, &empty, `{"users":{"@alice:peer.test":100}}`)
	add(spec.MRoomJoinRules, &empty, `{"join_rule":"public"}`)
	msg := add("m.room.message", nil, `{"body":"hi"}`)
	want := []string{create.EventID(), join.EventID(), pl.EventID()}
	if got := msg.AuthEventIDs(); !sameSet(got, want) {
		t.Errorf("message's auth events %v, want %v", got, want)
	}
	redacted, err := v11.RedactEventJSON(msg.JSON())
	if err != nil {
		t.Fatal(err)
	}
	if err := gomatrixserverlib.VerifyJSON(string(id.Name), id.KeyID, pub, redacted); err != nil {
		t.Errorf("signed event: %v", err)
	}
	if _, err := id.Sign(v11, &gomatrixserverlib.ProtoEvent{Type: "m.room.message", Content: []byte(`not json`)}); err == nil {
		t.Error("an event with content that is not JSON was built")
	}

	req, err := id.Request(context.Background(), "PUT", "target.test", "127.0.0.1:8448", "/_matrix/federation/v1/send/1", map[string]any{"pdus": []any{}})
	if err != nil {
		t.Fatal(err)
	}
	_, origin, dest, keyID, sig := fclient.ParseAuthorization(req.Header.Get("Authorization"))
	body, _ := io.ReadAll(req.Body)
	obj, _ := json.Marshal(map[string]any{"method": "PUT", "uri": "/_matrix/federation/v1/send/1", "origin": origin,
		"destination": dest, "content": json.RawMessage(body), "signatures": map[string]any{string(origin): map[string]string{string(keyID): sig}}})
	if origin != id.Name || dest != "target.test" || keyID != id.KeyID || req.URL.String() != "https://127.0.0.1:8448/_matrix/federation/v1/send/1" {
		t.Fatalf("request %s %s from %s to %s key %s", req.Method, req.URL, origin, dest, keyID)
	}
	if err := gomatrixserverlib.VerifyJSON(string(id.Name), id.KeyID, pub, obj); err != nil {
		t.Errorf("X-Matrix signature: %v", err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
