package fedreceiver_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
)

// TestSoftFailedNeverReachClients: bob's server has not heard of his ban
// and sends a message built before it; the message passes auth at its
// place in the graph but not against the current state, so it is soft
// failed: stored, answered without error, and never in a local member's
// /sync or /messages.
func TestSoftFailedNeverReachClients(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	roomID, rr := e.joinedRoom(alice, "11")
	bob := e.remote.User("bob")
	if _, err := alice.BanUser(e.ctx, id.RoomID(roomID), &mautrix.ReqBanUser{UserID: id.UserID(bob), Reason: "spam"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if m := e.membership(roomID, bob); m != spec.Ban {
			return fmt.Errorf("bob %q", m)
		}
		return nil
	})
	evading := rr.Message(bob, "evading the ban")
	status, res := e.remote.Send(raws(evading))
	if status != 200 || res[evading.EventID()].Error != "" {
		t.Fatalf("send: %d %+v", status, res)
	}
	ev := e.event(evading.EventID())
	if ev == nil || !ev.GetSoftFailed() {
		t.Fatalf("the evading message should be stored soft-failed: %+v", ev)
	}
	after, err := alice.SendText(e.ctx, id.RoomID(roomID), "after the ban")
	if err != nil {
		t.Fatal(err)
	}
	syncUntil(t, alice, roomID, func(seen []string) error {
		for _, s := range seen {
			if strings.Contains(s, "evading the ban") {
				return fmt.Errorf("a soft-failed event reached /sync")
			}
		}
		return contains(alice.UserID.String() + "|m.room.message|after the ban")(seen)
	})
	tl := timeline(t, alice, roomID)
	if slices.Contains(tl, evading.EventID()) || !slices.Contains(tl, after.EventID.String()) {
		t.Fatalf("/messages: %v", tl)
	}
}

// badPDU is one way to make a PDU that must not enter the room.
type badPDU struct {
	name string
	// make returns the PDU's JSON and the event IDs it might be stored
	// under (the intended one, and the one its JSON hashes to).
	make func(c *badCtx) []byte
	// allowedIn: room versions where this is valid after all (it is
	// then expected to be accepted: the control case).
	allowedIn []string
	// redacted: the spec's answer is to redact the event and go on (a
	// wrong content hash): it may be accepted, but only without content.
	redacted bool
}

// badCtx is what a case builds on.
type badCtx struct {
	t       *testing.T
	e       *env
	rr      *fedpeer.Room
	version string
	bob     string
	// rejected is an event refused earlier (the room's rejected name).
	rejected gomatrixserverlib.PDU
	name     string
}

// base builds a message of bob on the room's last event (not applied).
func (c *badCtx) base(body string) gomatrixserverlib.PDU {
	return c.rr.Build(c.bob, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body})
}

// edit changes a PDU's JSON object (signatures and hashes stay: the
// change breaks them, which is what these cases are for).
func edit(t *testing.T, raw []byte, f func(map[string]any)) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		t.Fatal(err)
	}
	f(obj)
	return mustJSON(t, obj)
}

// buildWith signs a proto-event of the room (changed by f) with the given
// room version's rules, key and server name.
func (c *badCtx) buildWith(verImpl gomatrixserverlib.IRoomVersion, server spec.ServerName, key ed25519.PrivateKey, sender, typ string, stateKey *string, content any, f func(*gomatrixserverlib.ProtoEvent)) []byte {
	c.t.Helper()
	pe := c.rr.Proto(sender, typ, stateKey, content)
	if f != nil {
		f(pe)
	}
	pe.Version = verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), server, c.rr.Server.KeyID, key)
	if err != nil {
		c.t.Fatalf("v%s %s: build: %v", c.version, c.name, err)
	}
	return ev.JSON()
}

// signedRaw adds the content hash and the peer's signature to an event
// object as it is (JSON the event builder refuses to make).
func (c *badCtx) signedRaw(obj map[string]any) []byte {
	c.t.Helper()
	canonical, err := gomatrixserverlib.CanonicalJSON(mustJSON(c.t, obj))
	if err != nil {
		c.t.Fatal(err)
	}
	sum := sha256.Sum256(canonical)
	obj["hashes"] = map[string]any{"sha256": base64.RawStdEncoding.EncodeToString(sum[:])}
	redacted, err := c.rr.Version.RedactEventJSON(mustJSON(c.t, obj))
	if err != nil {
		c.t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(string(c.rr.Server.Name), c.rr.Server.KeyID, c.rr.Server.Key, redacted)
	if err != nil {
		c.t.Fatal(err)
	}
	var sigs struct {
		Signatures json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &sigs); err != nil {
		c.t.Fatal(err)
	}
	obj["signatures"] = sigs.Signatures
	return mustJSON(c.t, obj)
}

// v5 signs with room version 5's rules: the same format as 6-10, but no
// canonical JSON checks, so JSON those versions forbid can be signed.
var v5 = gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV5)

func otherKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func msgContent(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }

var badPDUs = []badPDU{
	{name: "forged signature (another key under the server's key ID)", make: func(c *badCtx) []byte {
		return c.buildWith(c.rr.Version, c.rr.Server.Name, otherKey(c.t), c.bob, "m.room.message", nil, msgContent("forged"), nil)
	}},
	{name: "no signatures", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("unsigned").JSON(), func(o map[string]any) { o["signatures"] = map[string]any{} })
	}},
	{name: "signed by another server only", make: func(c *badCtx) []byte {
		return c.buildWith(c.rr.Version, "evil.test", otherKey(c.t), c.bob, "m.room.message", nil, msgContent("relayed"), nil)
	}},
	{name: "sender of another server", make: func(c *badCtx) []byte {
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, "@mallory:evil.test", "m.room.message", nil, msgContent("impostor"), nil)
	}},
	{name: "unknown key ID", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("unknown key").JSON(), func(o map[string]any) {
			sigs := o["signatures"].(map[string]any)[string(c.rr.Server.Name)].(map[string]any)
			for k, v := range sigs {
				delete(sigs, k)
				sigs["ed25519:nope"] = v
			}
		})
	}},
	{name: "signature of other bytes", make: func(c *badCtx) []byte {
		other := c.base("other").JSON()
		return edit(c.t, c.base("mine").JSON(), func(o map[string]any) {
			var oo map[string]any
			_ = json.Unmarshal(other, &oo)
			o["signatures"] = oo["signatures"]
		})
	}},
	{name: "content changed after signing (wrong content hash)", redacted: true, make: func(c *badCtx) []byte {
		return edit(c.t, c.base("original").JSON(), func(o map[string]any) {
			o["content"] = map[string]any{"msgtype": "m.text", "body": "TAMPERED CONTENT"}
		})
	}},
	{name: "hashes removed", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("no hashes").JSON(), func(o map[string]any) { delete(o, "hashes") })
	}},
	{name: "hash not base64", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("bad hash").JSON(), func(o map[string]any) { o["hashes"] = map[string]any{"sha256": "!!not base64!!"} })
	}},
	{name: "prev_events in the other format", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("wrong format").JSON(), func(o map[string]any) {
			prev := c.rr.Last.EventID()
			if c.rr.Version.EventFormat() == gomatrixserverlib.EventFormatV1 {
				o["prev_events"] = []any{prev}
			} else {
				o["prev_events"] = []any{[]any{prev, map[string]any{"sha256": "abc"}}}
			}
		})
	}},
	{name: "event_id of the other format", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("event id").JSON(), func(o map[string]any) {
			if c.rr.Version.EventFormat() == gomatrixserverlib.EventFormatV1 {
				delete(o, "event_id")
			} else {
				o["room_id"] = 42
			}
		})
	}},
	{name: "no depth", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("no depth").JSON(), func(o map[string]any) { delete(o, "depth") })
	}},
	{name: "depth as a string", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("string depth").JSON(), func(o map[string]any) { o["depth"] = "7" })
	}},
	{name: "no sender", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("no sender").JSON(), func(o map[string]any) { delete(o, "sender") })
	}},
	{name: "no type", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("no type").JSON(), func(o map[string]any) { delete(o, "type") })
	}},
	{name: "content not an object", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("content").JSON(), func(o map[string]any) { o["content"] = "just a string" })
	}},
	{name: "prev_events not a list", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("prevs").JSON(), func(o map[string]any) { o["prev_events"] = "nope" })
	}},
	{name: "origin_server_ts as a string", make: func(c *badCtx) []byte {
		return edit(c.t, c.base("ts").JSON(), func(o map[string]any) { o["origin_server_ts"] = "yesterday" })
	}},
	{name: "float in content (validly signed up to room version 10)", allowedIn: []string{"1", "3"}, make: func(c *badCtx) []byte {
		return c.nonCanonical(map[string]any{"msgtype": "m.text", "body": "float", "ratio": json.Number("1.5")})
	}},
	{name: "integer beyond 2^53 in content (validly signed up to room version 10)", allowedIn: []string{"1", "3"}, make: func(c *badCtx) []byte {
		return c.nonCanonical(map[string]any{"msgtype": "m.text", "body": "big", "n": json.Number("9007199254740993")})
	}},
	{name: "duplicate key in content", make: func(c *badCtx) []byte {
		raw := c.base("dup").JSON()
		return bytes.Replace(raw, []byte(`"body":"dup"`), []byte(`"body":"dup","body":"second value"`), 1)
	}},
	{name: "duplicate top-level key", make: func(c *badCtx) []byte {
		raw := c.base("dup top").JSON()
		return bytes.Replace(raw, []byte(`"type":"m.room.message"`), []byte(`"type":"m.room.message","type":"m.room.name"`), 1)
	}},
	{name: "oversized event (over 65536 bytes)", make: func(c *badCtx) []byte {
		return c.buildWithLenient(msgContent(strings.Repeat("x", 70000)))
	}},
	{name: "fails auth: a state event without the power", make: func(c *badCtx) []byte {
		empty := ""
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.bob, spec.MRoomName, &empty, map[string]any{"name": "hijacked"}, nil)
	}},
	{name: "fails auth: a message from a user who never joined", make: func(c *badCtx) []byte {
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.rr.Server.User("stranger"), "m.room.message", nil, msgContent("not a member"), nil)
	}},
	{name: "fails auth: power levels raising the sender", make: func(c *badCtx) []byte {
		empty := ""
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.bob, spec.MRoomPowerLevels, &empty,
			map[string]any{"users": map[string]any{c.bob: 100}}, nil)
	}},
	{name: "auth events include a rejected event", make: func(c *badCtx) []byte {
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.bob, "m.room.message", nil, msgContent("on a rejected event"),
			func(pe *gomatrixserverlib.ProtoEvent) {
				switch a := pe.AuthEvents.(type) {
				case []string:
					pe.AuthEvents = append(a, c.rejected.EventID())
				default:
					pe.AuthEvents = append(authIDs(a), c.rejected.EventID())
				}
			})
	}},
	{name: "a second create event naming this room (in room version 12 the create event's room is its hash: another room)", make: func(c *badCtx) []byte {
		empty := ""
		var raw []byte
		if c.rr.Version.DomainlessRoomIDs() {
			// The event builder refuses a room ID on these; gomatrixserverlib
			// parses one (and ignores it).
			raw = c.signedRaw(map[string]any{"type": spec.MRoomCreate, "state_key": "", "sender": c.bob, "room_id": c.rr.RoomID,
				"content": map[string]any{"room_version": c.version}, "auth_events": []string{}, "prev_events": []string{},
				"depth": 1, "origin_server_ts": time.Now().UnixMilli()})
		} else {
			raw = c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.bob, spec.MRoomCreate, &empty,
				map[string]any{"room_version": c.version}, nil)
		}
		if !bytes.Contains(raw, []byte(c.rr.RoomID)) {
			c.t.Fatalf("v%s: the create event does not name the room: %s", c.version, raw)
		}
		return raw
	}},
	{name: "prev event nobody has", make: func(c *badCtx) []byte {
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.bob, "m.room.message", nil, msgContent("orphan"),
			func(pe *gomatrixserverlib.ProtoEvent) {
				pe.PrevEvents = []string{"$nobodyhasthis" + fmt.Sprint(time.Now().UnixNano())}
			})
	}},
}

// authIDs reads IDs out of a reference list (room versions 1 and 2).
func authIDs(v any) []string {
	var out []string
	raw, _ := json.Marshal(v)
	var refs []json.RawMessage
	_ = json.Unmarshal(raw, &refs)
	for _, r := range refs {
		var id string
		if json.Unmarshal(r, &id) == nil {
			out = append(out, id)
			continue
		}
		var pair []json.RawMessage
		if json.Unmarshal(r, &pair) == nil && len(pair) > 0 {
			_ = json.Unmarshal(pair[0], &id)
			out = append(out, id)
		}
	}
	return out
}

// nonCanonical builds a message whose content is JSON that canonical JSON
// (room versions 6 on) forbids: signed by the rules of the room's
// version up to 5, of version 5 (the same format) for 6 to 10; in 11 and
// 12 (which gomatrixserverlib cannot sign so) the content is swapped into
// a signed message.
func (c *badCtx) nonCanonical(content map[string]any) []byte {
	switch c.version {
	case "1", "3":
		return c.buildWith(c.rr.Version, c.rr.Server.Name, c.rr.Server.Key, c.bob, "m.room.message", nil, content, nil)
	case "6", "10":
		return c.buildWith(v5, c.rr.Server.Name, c.rr.Server.Key, c.bob, "m.room.message", nil, content, nil)
	}
	return edit(c.t, c.base("non-canonical").JSON(), func(o map[string]any) { o["content"] = content })
}

// buildWithLenient builds an oversized event: gomatrixserverlib refuses
// to build it, so it is the JSON of a valid message with the content
// swapped in (unsigned for it, and too large anyway).
func (c *badCtx) buildWithLenient(content map[string]any) []byte {
	return edit(c.t, c.base("big").JSON(), func(o map[string]any) { o["content"] = content })
}

// TestBadInput sends at least 200 generated bad inputs and checks that
// none of them changes anything: bad PDUs in every room version family
// (forged signatures, wrong hashes, formats of another version, canonical
// JSON the version forbids, duplicate keys, oversized, failing auth,
// resting on a rejected event), bad transactions, bad or missing X-Matrix
// headers, a wrong destination, bad send_join/send_leave/send_knock and
// invites. Afterwards the rooms' state is as before, no refused event is
// in the graph or a local member's timeline, and no refused request left
// a transaction behind.
func TestBadInput(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	bob := e.remote.User("bob")
	cases := 0
	var refused []string // event IDs that must not be in the graph
	type roomCheck struct {
		roomID string
		state  []string
	}
	var rooms []roomCheck
	for _, version := range []string{"1", "3", "6", "10", "11", "12"} {
		roomID, rr := e.joinedRoom(alice, version)
		c := &badCtx{t: t, e: e, rr: rr, version: version, bob: bob}
		// The room's rejected event, for the case resting on it.
		empty := ""
		c.rejected = rr.Build(bob, spec.MRoomName, &empty, map[string]any{"name": "rejected name"})
		if status, res := e.remote.Send(raws(c.rejected)); status != 200 || !strings.Contains(res[c.rejected.EventID()].Error, "rejected") {
			t.Fatalf("v%s: the name without power: %d %+v", version, status, res)
		}
		refused = append(refused, c.rejected.EventID())
		state := e.stateIDs(roomID)
		for _, bc := range badPDUs {
			c.name = bc.name
			raw := bc.make(c)
			cases++
			status, res := e.remote.Send([]json.RawMessage{raw})
			if status != 200 {
				t.Errorf("v%s %s: transaction %d", version, bc.name, status)
				continue
			}
			id := eventIDOf(rr.Version, raw)
			allowed := slices.Contains(bc.allowedIn, version)
			switch {
			case allowed:
				if id == "" || res[id].Error != "" || !e.accepted(id) {
					t.Errorf("v%s %s: allowed in this version but not accepted: %+v", version, bc.name, res)
				}
				// The room moved on: build the next cases on it.
				ev, _ := rr.Version.NewEventFromUntrustedJSON(raw)
				rr.Apply(ev)
				state = e.stateIDs(roomID)
			case bc.redacted:
				if ev := e.event(id); ev != nil && (bytes.Contains(ev.GetEventJson(), []byte("TAMPERED")) || !contentRedacted(ev.GetEventJson())) {
					t.Errorf("v%s %s: stored with its content: %s", version, bc.name, ev.GetEventJson())
				}
				if e.accepted(id) {
					ev, _ := rr.Version.NewEventFromUntrustedJSON(raw)
					rr.Apply(ev)
				}
			default:
				if id != "" && res[id].Error == "" {
					t.Errorf("v%s %s: answered without an error: %+v", version, bc.name, res)
				}
				if id != "" {
					if ev := e.event(id); ev != nil && !ev.GetRejected() {
						if bytes.Contains(ev.GetEventJson(), []byte("TAMPERED")) || !ev.GetOutlier() && !contentRedacted(ev.GetEventJson()) {
							t.Errorf("v%s %s: stored and not rejected: %s", version, bc.name, ev.GetEventJson())
						}
					}
					refused = append(refused, id)
				}
			}
		}
		rooms = append(rooms, roomCheck{roomID, state})

		// send_join, send_leave and send_knock of the wrong event, and
		// invites that are not.
		msg := rr.Build(bob, "m.room.message", nil, msgContent("not a membership"))
		leaveOther := rr.Build(bob, spec.MRoomMember, ptr(rr.Server.User("someone")), map[string]any{"membership": "leave"})
		joinOfOther := rr.Build(bob, spec.MRoomMember, ptr(rr.Server.User("carol")), map[string]any{"membership": "join"})
		for _, m := range []struct {
			kind string
			ev   gomatrixserverlib.PDU
		}{
			{"join", msg}, {"join", joinOfOther}, {"join", rr.Build(bob, spec.MRoomMember, &bob, map[string]any{"membership": "leave"})},
			{"leave", msg}, {"leave", leaveOther}, {"leave", rr.Last},
			{"knock", msg}, {"knock", rr.Last},
		} {
			for _, api := range []string{"v1", "v2"} {
				if m.kind == "knock" && api == "v2" {
					continue
				}
				cases++
				if status, body := e.remote.SendMembership(m.kind, api, roomID, m.ev); status < 400 || status >= 500 {
					t.Errorf("v%s send_%s %s of %s: %d %s", version, m.kind, api, m.ev.Type(), status, body)
				}
			}
			if m.ev != rr.Last {
				refused = append(refused, m.ev.EventID())
			}
		}
		// The path's event ID must be the event's.
		_, join := e.remote.MakeMembership("join", roomID, e.remote.User("pathcheck"+version))
		cases++
		if status, body := e.remote.Put("/_matrix/federation/v2/send_join/"+esc(roomID)+"/"+esc("$other"), json.RawMessage(join.JSON())); status != 400 {
			t.Errorf("v%s send_join under another event ID: %d %s", version, status, body)
		}
		cases++
		if status, body := e.evil.Put("/_matrix/federation/v2/send_join/"+esc(roomID)+"/"+esc(join.EventID()), json.RawMessage(join.JSON())); status != 400 {
			t.Errorf("v%s send_join relayed by another server: %d %s", version, status, body)
		}
		refused = append(refused, join.EventID())
	}

	// Transactions.
	txBodies := []struct {
		name string
		raw  string
	}{
		{"no pdus", `{"origin":"remote.test","origin_server_ts":1}`},
		{"no origin_server_ts", `{"origin":"remote.test","pdus":[]}`},
		{"another origin", `{"origin":"evil.test","origin_server_ts":1,"pdus":[]}`},
		{"pdus not a list", `{"origin":"remote.test","origin_server_ts":1,"pdus":{}}`},
		{"edus not a list", `{"origin":"remote.test","origin_server_ts":1,"pdus":[],"edus":"x"}`},
		{"an array", `[1,2,3]`},
		{"a string", `"transaction"`},
		{"U+0000 in a string", `{"origin":"remote.test","origin_server_ts":1,"pdus":[],"x":"\u0000"}`},
		{"a lone surrogate", `{"origin":"remote.test","origin_server_ts":1,"pdus":[],"x":"\ud800"}`},
		{"duplicate origin", `{"origin":"remote.test","origin":"evil.test","origin_server_ts":1,"pdus":[]}`},
	}
	for _, tb := range txBodies {
		cases++
		status, body := e.remote.Do(fedpeer.Request{Method: "PUT", Path: "/_matrix/federation/v1/send/" + e.remote.NextTxn(), Raw: []byte(tb.raw)})
		if status != 400 {
			t.Errorf("transaction %s: %d %s", tb.name, status, body)
		}
	}

	// X-Matrix.
	sendPath := func() string { return "/_matrix/federation/v1/send/" + e.remote.NextTxn() }
	emptyTxn := map[string]any{"origin": "remote.test", "origin_server_ts": 1, "pdus": []any{}}
	headerCases := []struct {
		name   string
		req    fedpeer.Request
		status int
	}{
		{"no Authorization", fedpeer.Request{Unsigned: true}, 401},
		{"a wrong destination", fedpeer.Request{Destination: "other.test"}, 401},
		{"another scheme", fedpeer.Request{Tamper: func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "X-Matrix", "Bearer", 1))
		}}, 401},
		{"no signature", fedpeer.Request{Tamper: func(r *http.Request) {
			h := r.Header.Get("Authorization")
			r.Header.Set("Authorization", h[:strings.Index(h, ",sig=")])
		}}, 401},
		{"a signature of other bytes", fedpeer.Request{Tamper: func(r *http.Request) {
			h := r.Header.Get("Authorization")
			i := strings.Index(h, `sig="`) + 5
			r.Header.Set("Authorization", h[:i]+"AAAA"+h[i+4:])
		}}, 401},
		{"an unknown key", fedpeer.Request{Tamper: func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "ed25519:remote", "ed25519:other", 1))
		}}, 401},
		{"another origin", fedpeer.Request{Tamper: func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), `origin="remote.test"`, `origin="evil.test"`, 1))
		}}, 401},
		{"an unknown origin", fedpeer.Request{Tamper: func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), `origin="remote.test"`, `origin="nowhere.test"`, 1))
		}}, 401},
		{"a changed path", fedpeer.Request{Tamper: func(r *http.Request) { r.URL.Path += "x" }}, 401},
		{"a changed method", fedpeer.Request{Tamper: func(r *http.Request) { r.Method = "POST" }}, 405},
		{"a changed body", fedpeer.Request{Tamper: func(r *http.Request) {
			b := []byte(`{"origin":"remote.test","origin_server_ts":2,"pdus":[]}`)
			r.Body, r.ContentLength = ioNop(b), int64(len(b))
		}}, 401},
		{"two origins", fedpeer.Request{Tamper: func(r *http.Request) {
			r.Header.Add("Authorization", `X-Matrix origin="evil.test",key="ed25519:remote",sig="AAAA"`)
		}}, 401},
		{"a body that is not JSON", fedpeer.Request{Tamper: func(r *http.Request) {
			r.Body, r.ContentLength = ioNop([]byte("not json")), 8
		}}, 400},
	}
	for _, hc := range headerCases {
		cases++
		req := hc.req
		req.Method, req.Path, req.Body = "PUT", sendPath(), emptyTxn
		if status, body := e.remote.Do(req); status != hc.status {
			t.Errorf("X-Matrix %s: %d %s, want %d", hc.name, status, body, hc.status)
		}
	}
	// Signed by evil.test's key while claiming remote.test.
	cases++
	status, body := e.evil.Do(fedpeer.Request{Method: "PUT", Path: sendPath(), Body: emptyTxn, Tamper: func(r *http.Request) {
		r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), `origin="evil.test"`, `origin="remote.test"`, 1))
	}})
	if status != 401 {
		t.Errorf("remote.test's name with evil.test's key: %d %s", status, body)
	}
	// Too large.
	cases++
	big := map[string]any{"origin": "remote.test", "origin_server_ts": 1, "pdus": []any{}, "pad": strings.Repeat("x", 17<<20)}
	if status, _ := e.remote.Do(fedpeer.Request{Method: "PUT", Path: sendPath(), Body: big}); status != http.StatusRequestEntityTooLarge {
		t.Errorf("a 17 MiB transaction: %d", status)
	}

	if cases < 200 {
		t.Fatalf("only %d bad inputs", cases)
	}
	t.Logf("%d bad inputs", cases)

	// Nothing changed.
	for _, rc := range rooms {
		if got := e.stateIDs(rc.roomID); !slices.Equal(got, rc.state) {
			t.Errorf("room %s: state changed by bad input", rc.roomID)
		}
		tl := timeline(t, alice, rc.roomID)
		for _, id := range refused {
			if slices.Contains(tl, id) {
				t.Errorf("refused event %s in the timeline", id)
			}
		}
	}
	for _, id := range refused {
		if e.accepted(id) {
			if ev := e.event(id); !contentRedacted(ev.GetEventJson()) {
				t.Errorf("refused event %s is in the room graph", id)
			}
		}
	}
	// Refused requests left no transaction: the remote's stored ones are
	// exactly those it sent that were answered 200.
	if n := e.transactions("evil.test"); n != 0 {
		t.Errorf("%d transactions stored for evil.test", n)
	}
}

// eventIDOf computes the event ID a PDU would have (empty when it does
// not parse).
func eventIDOf(verImpl gomatrixserverlib.IRoomVersion, raw []byte) (id string) {
	defer func() {
		if recover() != nil {
			id = ""
		}
	}()
	var h struct {
		EventID string `json:"event_id"`
	}
	if json.Unmarshal(raw, &h) == nil && h.EventID != "" {
		return h.EventID
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(raw)
	if err != nil {
		return ""
	}
	return ev.EventID()
}

// contentRedacted: an event stored in its redacted form (a wrong content
// hash makes the spec's servers redact the event before going on).
func contentRedacted(raw []byte) bool {
	var e struct {
		Content map[string]any `json:"content"`
	}
	_ = json.Unmarshal(raw, &e)
	return len(e.Content) == 0
}

func ptr(s string) *string { return &s }

func ioNop(b []byte) *nopCloser { return &nopCloser{bytes.NewReader(b)} }

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
