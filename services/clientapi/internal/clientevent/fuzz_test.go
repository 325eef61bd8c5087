package clientevent

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParseFilter parses arbitrary filter JSON (POST /user/{userId}/filter,
// /sync's inline filter) and the room event filter of /messages and
// /context, then applies what it accepts to a few events. Nothing may
// panic; an accepted filter has no negative limit, reads back the same
// after a marshal round trip (what is stored is what applies), and a
// filter's limit caps the events it keeps.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"room":{"timeline":{"limit":2,"types":["m.*"],"not_senders":["@b:x"]},"rooms":["!a:x"],"not_rooms":["!b:x"],"include_leave":true}}`,
		`{"event_fields":["content.body","type"],"event_format":"federation","presence":{"not_types":["*"]}}`,
		`{"room":{"state":{"lazy_load_members":true,"contains_url":false},"timeline":{"limit":-1}}}`,
		`{"account_data":{"senders":["not an id"]}}`,
		`{"room":{"rooms":["!\u0000:x"]}}`,
		`{"room":{"timeline":{"types":["m.room.*","*.message"],"senders":["@a:x"],"unread_thread_notifications":true}}}`,
		`[]`, `{"room":null}`, `{"room":{"timeline":{"limit":1e9}}}`,
	} {
		f.Add([]byte(s))
	}
	events := []json.RawMessage{
		json.RawMessage(`{"type":"m.room.message","sender":"@a:x","content":{"body":"x","url":"mxc://x/y"}}`),
		json.RawMessage(`{"type":"m.room.member","sender":"@b:x","state_key":"@b:x","content":{}}`),
		json.RawMessage(`{"type":"org.example","sender":"@c:x","content":{"url":7}}`),
		json.RawMessage(`not json`),
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ref, refErr := ParseRoomEventFilter(string(raw))
		if refErr == nil {
			if ref.Limit != nil && *ref.Limit < 0 {
				// /messages clamps; only the stored filter refuses.
				ref.Limit = nil
			}
			list := EventList{Events: append([]json.RawMessage(nil), events...)}
			ref.FilterList("!a:x", &list)
			if ref.Limit != nil && len(list.Events) > *ref.Limit {
				t.Fatalf("limit %d kept %d events", *ref.Limit, len(list.Events))
			}
		}
		flt, err := ParseFilter(raw)
		if err != nil {
			return
		}
		for _, l := range []*int{flt.TimelineLimit()} {
			if l != nil && *l < 0 {
				t.Fatalf("accepted a negative limit: %s", raw)
			}
		}
		again, err := json.Marshal(flt)
		if err != nil {
			t.Fatalf("accepted filter does not marshal: %v", err)
		}
		back, err := ParseFilter(again)
		if err != nil {
			t.Fatalf("accepted filter %s refused after a round trip as %s: %v", raw, again, err)
		}
		if !reflect.DeepEqual(flt, back) {
			t.Fatalf("filter changed in a round trip: %s -> %s", raw, again)
		}
		flt.AllowsRoom("!a:x")
		flt.LazyFilter()
		if flt.Room != nil {
			for _, rf := range []*RoomEventFilter{flt.Room.Timeline, flt.Room.State, flt.Room.Ephemeral, flt.Room.AccountData} {
				list := EventList{Events: append([]json.RawMessage(nil), events...)}
				rf.FilterList("!a:x", &list)
				if rf != nil && rf.Limit != nil && len(list.Events) > *rf.Limit {
					t.Fatalf("limit %d kept %d events", *rf.Limit, len(list.Events))
				}
			}
		}
		for _, ef := range []*EventFilter{flt.Presence, flt.AccountData} {
			list := EventList{Events: append([]json.RawMessage(nil), events...)}
			ef.FilterList(&list)
		}
	})
}
