package syncapi

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
)

// TestApplyFilterEphemeralAndPresence covers the filters the integration
// tests cannot reach without the presence service: presence and
// ephemeral events are filtered by type, sender, room and limit.
func TestApplyFilterEphemeralAndPresence(t *testing.T) {
	ev := func(typ, sender string) json.RawMessage {
		raw, _ := json.Marshal(map[string]any{"type": typ, "sender": sender, "content": map[string]any{}})
		return raw
	}
	build := func() *syncResponse {
		return &syncResponse{
			Presence: clientevent.EventList{Events: []json.RawMessage{ev("m.presence", "@a:x"), ev("m.presence", "@b:x"), ev("m.presence", "@c:x")}},
			Rooms: syncRooms{Join: map[string]*joinedRoom{
				"!r1:x": {Ephemeral: clientevent.EventList{Events: []json.RawMessage{ev("m.typing", ""), ev("m.receipt", "")}}},
				"!r2:x": {Ephemeral: clientevent.EventList{Events: []json.RawMessage{ev("m.typing", ""), ev("m.receipt", "")}}},
			}},
		}
	}
	types := func(l clientevent.EventList) []string {
		var out []string
		for _, raw := range l.Events {
			var e clientevent.RawEvent
			_ = json.Unmarshal(raw, &e)
			out = append(out, e.Type+e.Sender)
		}
		return out
	}
	cases := []struct {
		filter           string
		presence, r1, r2 []string
	}{
		{`{}`, []string{"m.presence@a:x", "m.presence@b:x", "m.presence@c:x"}, []string{"m.typing", "m.receipt"}, []string{"m.typing", "m.receipt"}},
		{`{"presence":{"not_senders":["@b:x"]}}`, []string{"m.presence@a:x", "m.presence@c:x"}, []string{"m.typing", "m.receipt"}, []string{"m.typing", "m.receipt"}},
		{`{"presence":{"senders":["@c:x"]}}`, []string{"m.presence@c:x"}, []string{"m.typing", "m.receipt"}, []string{"m.typing", "m.receipt"}},
		{`{"presence":{"limit":1}}`, []string{"m.presence@a:x"}, []string{"m.typing", "m.receipt"}, []string{"m.typing", "m.receipt"}},
		{`{"presence":{"not_types":["*"]}}`, nil, []string{"m.typing", "m.receipt"}, []string{"m.typing", "m.receipt"}},
		{`{"room":{"ephemeral":{"types":["m.typing"]}}}`, []string{"m.presence@a:x", "m.presence@b:x", "m.presence@c:x"}, []string{"m.typing"}, []string{"m.typing"}},
		{`{"room":{"ephemeral":{"not_rooms":["!r2:x"]}}}`, []string{"m.presence@a:x", "m.presence@b:x", "m.presence@c:x"}, []string{"m.typing", "m.receipt"}, nil},
		{`{"room":{"ephemeral":{"rooms":["!r2:x"],"limit":1}}}`, []string{"m.presence@a:x", "m.presence@b:x", "m.presence@c:x"}, nil, []string{"m.typing"}},
	}
	s := &Service{}
	for _, c := range cases {
		f, err := clientevent.ParseFilter([]byte(c.filter))
		if err != nil {
			t.Fatal(err)
		}
		resp := build()
		if err := s.applyFilter(context.Background(), f, resp); err != nil {
			t.Fatal(err)
		}
		if got := types(resp.Presence); !slices.Equal(got, c.presence) {
			t.Errorf("%s: presence %v, want %v", c.filter, got, c.presence)
		}
		if got := types(resp.Rooms.Join["!r1:x"].Ephemeral); !slices.Equal(got, c.r1) {
			t.Errorf("%s: r1 ephemeral %v, want %v", c.filter, got, c.r1)
		}
		if got := types(resp.Rooms.Join["!r2:x"].Ephemeral); !slices.Equal(got, c.r2) {
			t.Errorf("%s: r2 ephemeral %v, want %v", c.filter, got, c.r2)
		}
	}
}

func TestEventFields(t *testing.T) {
	raw := json.RawMessage(`{"type":"m.room.message","sender":"@a:x","content":{"body":"hi","m.relates_to":{"rel_type":"x"},"a.b":1},"unsigned":{"age":1}}`)
	cases := []struct {
		fields []string
		want   string
	}{
		{[]string{"type"}, `{"type":"m.room.message"}`},
		{[]string{"content.body", "sender"}, `{"content":{"body":"hi"},"sender":"@a:x"}`},
		{[]string{"content.m\\.relates_to"}, `{"content":{"m.relates_to":{"rel_type":"x"}}}`},
		{[]string{"content.a\\.b"}, `{"content":{"a.b":1}}`},
		{[]string{"content", "content.body"}, `{"content":{"body":"hi","m.relates_to":{"rel_type":"x"},"a.b":1}}`},
		{[]string{"content.m.relates_to.rel_type"}, `{}`},
		{[]string{"nope", "type.deeper"}, `{}`},
	}
	for _, c := range cases {
		paths := make([][]string, len(c.fields))
		for i, p := range c.fields {
			paths[i] = splitFieldPath(p)
		}
		if got := string(onlyFields(raw, paths)); got != c.want {
			t.Errorf("%v: %s, want %s", c.fields, got, c.want)
		}
	}
}
