package fedreceiver_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
)

// TestReads: a server in the room reads /state, /state_ids, /event,
// /event_auth, /backfill, /get_missing_events and /timestamp_to_event; a
// server that is not in the room is refused (403), and gets /event only
// for events its visibility allows.
func TestReads(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	roomID, rr := e.joinedRoom(alice, "11")
	var sent []string
	for i := range 5 {
		resp, err := alice.SendText(e.ctx, id.RoomID(roomID), "history "+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID.String())
	}
	last := sent[len(sent)-1]
	join := rr.Last.EventID()
	q := "/_matrix/federation/v1/"
	room := esc(roomID)

	status, body := e.remote.Get(q + "state/" + room + "?event_id=" + esc(last))
	var st struct {
		PDUs      []json.RawMessage `json:"pdus"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if status != 200 || json.Unmarshal(body, &st) != nil || len(st.PDUs) < 5 || len(st.AuthChain) == 0 {
		t.Fatalf("/state: %d %s", status, body)
	}
	status, body = e.remote.Get(q + "state_ids/" + room + "?event_id=" + esc(last))
	var sids struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	if status != 200 || json.Unmarshal(body, &sids) != nil || len(sids.PDUIDs) != len(st.PDUs) || !slices.Contains(sids.PDUIDs, join) {
		t.Fatalf("/state_ids: %d %s", status, body)
	}
	status, body = e.remote.Get(q + "event/" + esc(last))
	var txn struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
	}
	if status != 200 || json.Unmarshal(body, &txn) != nil || txn.Origin != hsName || len(txn.PDUs) != 1 {
		t.Fatalf("/event: %d %s", status, body)
	}
	status, body = e.remote.Get(q + "event_auth/" + room + "/" + esc(last))
	var auth struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if status != 200 || json.Unmarshal(body, &auth) != nil || len(auth.AuthChain) < 3 {
		t.Fatalf("/event_auth: %d %s", status, body)
	}
	status, body = e.remote.Get(q + "backfill/" + room + "?v=" + esc(last) + "&limit=3")
	if status != 200 || json.Unmarshal(body, &txn) != nil || len(txn.PDUs) != 3 {
		t.Fatalf("/backfill: %d %s", status, body)
	}
	status, body = e.remote.Do(fedpeer.Request{Method: "POST", Path: q + "get_missing_events/" + room,
		Body: map[string]any{"earliest_events": []string{join}, "latest_events": []string{last}, "limit": 10}})
	var missing struct {
		Events []json.RawMessage `json:"events"`
	}
	if status != 200 || json.Unmarshal(body, &missing) != nil || len(missing.Events) != 4 {
		t.Fatalf("/get_missing_events: %d %s (want the 4 messages between)", status, body)
	}
	status, body = e.remote.Get(q + "timestamp_to_event/" + room + "?dir=b&ts=" + strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10))
	var ts struct {
		EventID string `json:"event_id"`
	}
	if status != 200 || json.Unmarshal(body, &ts) != nil || ts.EventID != last {
		t.Fatalf("/timestamp_to_event: %d %s, want %s", status, body, last)
	}
	if status, body := e.remote.Get(q + "timestamp_to_event/" + room + "?dir=f&ts=" + strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)); status != 404 {
		t.Fatalf("/timestamp_to_event after the last event: %d %s", status, body)
	}

	// evil.test is in no room.
	for _, path := range []string{
		q + "state/" + room + "?event_id=" + esc(last),
		q + "state_ids/" + room + "?event_id=" + esc(last),
		q + "event_auth/" + room + "/" + esc(last),
		q + "backfill/" + room + "?v=" + esc(last) + "&limit=3",
		q + "timestamp_to_event/" + room + "?dir=b&ts=" + strconv.FormatInt(time.Now().UnixMilli(), 10),
	} {
		if status, body := e.evil.Get(path); status != http.StatusForbidden || errcode(body) != "M_FORBIDDEN" {
			t.Errorf("evil.test GET %s: %d %s, want 403 M_FORBIDDEN", path, status, body)
		}
	}
	status, body = e.evil.Do(fedpeer.Request{Method: "POST", Path: q + "get_missing_events/" + room,
		Body: map[string]any{"earliest_events": []string{join}, "latest_events": []string{last}}})
	if status != http.StatusForbidden {
		t.Errorf("evil.test get_missing_events: %d %s", status, body)
	}
	// A shared-history room shows its events to servers in it only.
	if status, body := e.evil.Get(q + "event/" + esc(last)); status != http.StatusForbidden {
		t.Errorf("evil.test /event of a message it may not see: %d %s", status, body)
	}
	// Parameters.
	for _, c := range []struct {
		path   string
		status int
	}{
		{q + "state/" + room, 400},
		{q + "state/" + room + "?event_id=notanid", 400},
		{q + "state/" + room + "?event_id=" + esc("$unknown"), 404},
		{q + "backfill/" + room + "?limit=3", 400},
		{q + "backfill/" + room + "?v=" + esc(last), 400},
		{q + "backfill/" + room + "?v=" + esc(last) + "&limit=x", 400},
		{q + "event/" + esc("$nope"), 404},
		{q + "timestamp_to_event/" + room + "?dir=x&ts=1", 400},
		{q + "timestamp_to_event/" + room + "?dir=f&ts=x", 400},
	} {
		if status, body := e.remote.Get(c.path); status != c.status {
			t.Errorf("GET %s: %d %s, want %d", c.path, status, body, c.status)
		}
	}
}
