package roomserver

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// FuzzEventTemplate checks what the room-server does with a client's event
// before it builds it (parseTemplate), then builds what it accepts the way
// the key-server does (gomatrixserverlib's EventBuilder, signed by a
// throwaway key). Nothing may panic; a refusal is ErrBadRequest (a 400 at
// the client-API); and an event that builds must be one other servers
// accept: it parses as untrusted federation JSON (canonical JSON checks,
// size limits) and redacts.
func FuzzEventTemplate(f *testing.F) {
	for _, s := range []struct{ typ, stateKey, content, redacts string }{
		{"m.room.message", "-", `{"msgtype":"m.text","body":"hi"}`, ""},
		{"m.room.member", "@a:example.test", `{"membership":"join","displayname":"A"}`, ""},
		{"m.room.member", "nope", `{"membership":"join"}`, ""},
		{"m.room.power_levels", "", `{"users":{"@a:example.test":100},"ban":"50"}`, ""},
		{"m.room.power_levels", "", `{"users":{"@a:example.test":1.5}}`, ""},
		{"m.room.redaction", "-", `{"reason":"x"}`, "$e"},
		{"m.room.redaction", "-", `{"redacts":7}`, ""},
		{"m.room.create", "", `{}`, ""},
		{"m.room.message", "-", `{"n":1.5,"big":9007199254740993,"e":1e2}`, ""},
		{"m.room.message", "-", `{"e":1E2}`, ""},
		{"m.room.message", "-", `{"z":0.0,"m":-0}`, ""},
		{"m.room.message", "-", `{"f":1.5}`, ""},
		{"m.room.topic", "", `{"topic":"\ud83d\ude00"}`, ""},
		{"", "-", `[]`, ""},
		{"m.room.message", "-", `{"\b0":0,"a":{"\u0001":"x"}}`, ""},
	} {
		f.Add(s.typ, s.stateKey, []byte(s.content), s.redacts)
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	f.Fuzz(func(t *testing.T, typ, stateKey string, content []byte, redacts string) {
		tmpl := &roomserverv1.EventTemplate{Type: typ, Content: content, Redacts: redacts}
		if stateKey != "-" {
			tmpl.StateKey = &stateKey
		}
		out, err := parseTemplate(verImpl, tmpl)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("refused without ErrBadRequest: %v", err)
			}
			return
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(out.Content, &obj) != nil || obj == nil {
			t.Fatalf("accepted content %q is not a JSON object", out.Content)
		}
		pe := &gomatrixserverlib.ProtoEvent{
			SenderID: "@fuzz:example.test", RoomID: "!room:example.test", Type: out.Type, StateKey: out.StateKey,
			Content: spec.RawJSON(out.Content), Redacts: out.Redacts, Version: verImpl,
			PrevEvents: []string{"$prev"}, AuthEvents: []string{"$create"}, Depth: 2,
		}
		ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.UnixMilli(1700000000000), "example.test", "ed25519:fz", key)
		if err != nil {
			return // the key-server answers ErrBadEvent: a 400
		}
		if _, err := verImpl.NewEventFromUntrustedJSON(ev.JSON()); err != nil {
			t.Fatalf("built an event other servers refuse: %v\n%s", err, ev.JSON())
		}
		if _, err := verImpl.RedactEventJSON(ev.JSON()); err != nil {
			t.Fatalf("built an event that does not redact: %v", err)
		}
		if !json.Valid(ev.JSON()) {
			t.Fatalf("built an event that is not JSON: %q", ev.JSON())
		}
		if err := checkIntegers(ev.JSON()); err != nil {
			t.Fatalf("built an event that is not canonical JSON: %v\n%s", err, ev.JSON())
		}
	})
}

// TestParseTemplateNumbers: canonical JSON has only integers, so content
// with another number spelling is refused before it is built (1E2 and 0.0
// would otherwise be signed as given); so is content with a control
// character in a key, which gomatrixserverlib's canonical form writes raw.
func TestParseTemplateNumbers(t *testing.T) {
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	for content, ok := range map[string]bool{
		`{"n":100,"m":-5,"z":0,"a":[1,{"b":2}]}`: true,
		`{"n":1E2}`:                              false, `{"n":1e2}`: false, `{"n":0.0}`: false, `{"n":-0}`: false, `{"n":1.5}`: false, `{"a":[{"b":01}]}`: false,
	} {
		_, err := parseTemplate(verImpl, &roomserverv1.EventTemplate{Type: "m.room.message", Content: []byte(content)})
		if ok != (err == nil) || err != nil && !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: %v", content, err)
		}
	}
}
