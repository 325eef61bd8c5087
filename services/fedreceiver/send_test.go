package fedreceiver_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// TestGapFromMissingEvents: the remote sends only the last of three new
// events; the receiver asks it for the others with /get_missing_events
// and inputs them oldest first, and all three are in the room.
func TestGapFromMissingEvents(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	for _, version := range []string{"1", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			roomID, rr := e.joinedRoom(alice, version)
			bob := e.remote.User("bob")
			m1, m2, m3 := rr.Message(bob, "one"), rr.Message(bob, "two"), rr.Message(bob, "three")
			before := e.remote.Called("get_missing_events")
			status, res := e.remote.Send(raws(m3))
			if status != 200 || res[m3.EventID()].Error != "" {
				t.Fatalf("send: %d %+v", status, res)
			}
			if e.remote.Called("get_missing_events") == before {
				t.Fatal("the gap was not asked for with /get_missing_events")
			}
			for _, ev := range []gomatrixserverlib.PDU{m1, m2, m3} {
				if !e.accepted(ev.EventID()) {
					t.Fatalf("%s not accepted", ev.EventID())
				}
			}
			syncUntil(t, alice, roomID, func(seen []string) error {
				want := []string{bob + "|m.room.message|one", bob + "|m.room.message|two", bob + "|m.room.message|three"}
				return inOrder(seen, want)
			})
		})
	}
}

// inOrder: want appear in seen in this order.
func inOrder(seen, want []string) error {
	i := 0
	for _, s := range seen {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	if i < len(want) {
		return fmt.Errorf("want %v in order, seen %v", want, seen)
	}
	return nil
}

// TestGapFromStateIDs: a gap longer than /get_missing_events may fill
// (the limit is 20) is crossed with the state at the PDU's prev event:
// /state_ids, the prev event with /event, and the state events this
// server lacks. The PDU is then in the room with that state.
func TestGapFromStateIDs(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	for _, version := range []string{"2", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			roomID, rr := e.joinedRoom(alice, version)
			bob := e.remote.User("bob")
			// 30 events, bob's new display name among them: state the
			// server does not have, which it must fetch.
			for i := range 30 {
				if i == 5 {
					rr.Add(bob, "m.room.member", &bob, map[string]any{"membership": "join", "displayname": "Bob from the gap"})
					continue
				}
				rr.Message(bob, fmt.Sprintf("gap %d", i))
			}
			last := rr.Message(bob, "after the gap")
			stateIDs, events := e.remote.Called("state_ids"), e.remote.Called("event")
			status, res := e.remote.Send(raws(last))
			if status != 200 || res[last.EventID()].Error != "" {
				t.Fatalf("send: %d %+v", status, res)
			}
			if e.remote.Called("state_ids") == stateIDs || e.remote.Called("event") == events {
				t.Fatal("the state was not fetched with /state_ids and /event")
			}
			if !e.accepted(last.EventID()) {
				t.Fatal("the PDU is not in the room")
			}
			var name string
			for _, id := range e.stateIDs(roomID) {
				var c struct {
					Type     string `json:"type"`
					StateKey string `json:"state_key"`
					Content  struct {
						Displayname string `json:"displayname"`
					} `json:"content"`
				}
				_ = json.Unmarshal(e.event(id).GetEventJson(), &c)
				if c.Type == "m.room.member" && c.StateKey == bob {
					name = c.Content.Displayname
				}
			}
			if name != "Bob from the gap" {
				t.Fatalf("bob's display name in the room is %q: the state from the gap did not arrive", name)
			}
			syncUntil(t, alice, roomID, contains(bob+"|m.room.message|after the gap"))
		})
	}
}

// TestTransactionReplay: a transaction sent again (same origin and txnId)
// gets the same answer without being processed again, even when its
// content differs; another origin's transaction of the same ID is its own.
func TestTransactionReplay(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	_, rr := e.joinedRoom(alice, "11")
	bob := e.remote.User("bob")
	m1 := rr.Message(bob, "first")
	txn := e.remote.NextTxn()
	status, first := e.remote.SendTxn(txn, raws(m1))
	if status != 200 || len(first) != 1 {
		t.Fatalf("send: %d %+v", status, first)
	}
	m2 := rr.Message(bob, "second, under the same txnId")
	status, again := e.remote.SendTxn(txn, raws(m2))
	if status != 200 || len(again) != 1 || again[m1.EventID()].Error != "" {
		t.Fatalf("replay answered %d %+v, want the first answer %+v", status, again, first)
	}
	if e.event(m2.EventID()) != nil {
		t.Fatal("the replayed transaction was processed again")
	}
	if n := e.transactions(string(e.remote.Name)); n != 1 {
		t.Fatalf("%d stored transactions, want 1", n)
	}
	// The same ID from another server is another transaction.
	if status, res := e.evil.SendTxn(txn, nil); status != 200 || len(res) != 0 {
		t.Fatalf("evil's transaction: %d %+v", status, res)
	}
	if n := e.transactions(string(e.evil.Name)); n != 1 {
		t.Fatalf("evil: %d stored transactions, want 1", n)
	}
}

// TestTransactionOnceAcrossReplicas: two receiver replicas (two
// processes on one database) get the same transaction at once; it is
// processed once (the remote is asked to fill its gap once) and both
// answer the same.
func TestTransactionOnceAcrossReplicas(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	_, rr := e.joinedRoom(alice, "11")
	// The second replica: federation-receiver only, on the same database
	// and NATS, its peers the first process's services.
	cfg := e.hs.Config
	cfg.HTTP.Listen, cfg.GRPC.Listen, cfg.Federation.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	grpcAddr := e.hs.Process.GRPCAddr()
	for _, a := range []*myelin.ServiceAddress{&cfg.Services.KeyServer, &cfg.Services.RoomServer, &cfg.Services.Presence, &cfg.Services.ClientAPI} {
		a.GRPC = grpcAddr
	}
	replica := stack.StartWithConfig(t, cfg, myelin.TargetFederationReceiver)
	targets := []string{"", replica.Process.FederationAddr()}

	bob := e.remote.User("bob")
	rr.Message(bob, "gap")
	last := rr.Message(bob, "after")
	// Hold the gap request until both replicas have the transaction.
	release := make(chan struct{})
	var once sync.Once
	e.remote.Mu.Lock()
	e.remote.OnRequest = func(kind string) {
		if kind == "get_missing_events" {
			<-release
		}
	}
	e.remote.Mu.Unlock()
	txn := e.remote.NextTxn()
	var wg sync.WaitGroup
	results := make([]map[string]fclient.PDUResult, 2)
	statuses := make([]int, 2)
	for i, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i], results[i] = e.remote.SendTxnAt(target, txn, raws(last))
		}()
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if e.remote.Called("get_missing_events") == 0 {
			return fmt.Errorf("no gap request yet")
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // let the other replica find the claim
	once.Do(func() { close(release) })
	wg.Wait()
	if statuses[0] != 200 || statuses[1] != 200 || results[0][last.EventID()].Error != "" || results[1][last.EventID()].Error != "" {
		t.Fatalf("answers: %v %+v %+v", statuses, results[0], results[1])
	}
	if n := e.remote.Called("get_missing_events"); n != 1 {
		t.Fatalf("the gap was asked for %d times: the transaction was processed more than once", n)
	}
	if !e.accepted(last.EventID()) {
		t.Fatal("not accepted")
	}
}

// TestTransactionLimits: more than 50 PDUs or 100 EDUs is a 400 and
// nothing of it is stored; 50 and 100 are fine.
func TestTransactionLimits(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	_, rr := e.joinedRoom(alice, "11")
	bob := e.remote.User("bob")
	var pdus []json.RawMessage
	var evs []gomatrixserverlib.PDU
	for i := range 51 {
		ev := rr.Message(bob, fmt.Sprintf("bulk %d", i))
		evs = append(evs, ev)
		pdus = append(pdus, ev.JSON())
	}
	edus := make([]gomatrixserverlib.EDU, 101)
	for i := range edus {
		edus[i] = gomatrixserverlib.EDU{Type: "m.typing", Content: []byte(`{"room_id":"` + rr.RoomID + `","user_id":"` + bob + `","typing":true}`)}
	}
	for _, c := range []struct {
		name string
		pdus []json.RawMessage
		edus []gomatrixserverlib.EDU
	}{{"51 PDUs", pdus, nil}, {"101 EDUs", nil, edus}} {
		status, body := e.remote.Put("/_matrix/federation/v1/send/"+e.remote.NextTxn(), map[string]any{
			"origin": e.remote.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": nonNil(c.pdus), "edus": c.edus})
		if status != http.StatusBadRequest {
			t.Fatalf("%s: %d %s", c.name, status, body)
		}
	}
	for _, ev := range evs {
		if e.event(ev.EventID()) != nil {
			t.Fatalf("%s stored from a refused transaction", ev.EventID())
		}
	}
	if n := e.transactions(string(e.remote.Name)); n != 0 {
		t.Fatalf("%d transactions stored", n)
	}
	status, res := e.remote.Send(pdus[:50], edus[:100]...)
	if status != 200 || len(res) != 50 {
		t.Fatalf("50 PDUs and 100 EDUs: %d, %d results", status, len(res))
	}
	for id, r := range res {
		if r.Error != "" {
			t.Fatalf("%s: %s", id, r.Error)
		}
	}
}

func nonNil(p []json.RawMessage) []json.RawMessage {
	if p == nil {
		return []json.RawMessage{}
	}
	return p
}

// TestSlowAndGarbageRemote: a remote that answers the gap requests slowly
// or with garbage neither hangs nor crashes anything: the PDU gets an
// error, nothing of it is stored, and the server goes on serving.
func TestSlowAndGarbageRemote(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	roomID, rr := e.joinedRoom(alice, "11")
	bob := e.remote.User("bob")
	kinds := []string{"get_missing_events", "state_ids", "state", "event", "event_auth"}
	for _, how := range []string{"slow", "garbage", "error", "empty"} {
		t.Run(how, func(t *testing.T) {
			for _, k := range kinds {
				e.remote.SetBehaviour(k, how)
			}
			defer func() {
				for _, k := range kinds {
					e.remote.SetBehaviour(k, "")
				}
			}()
			prev := rr.Last
			gapEv := rr.Message(bob, "unreachable "+how)
			last := rr.Message(bob, "after "+how)
			status, res := e.remote.Send(raws(last))
			if status != 200 || !strings.Contains(res[last.EventID()].Error, "could not be fetched") {
				t.Fatalf("%s remote: %d %+v", how, status, res)
			}
			for _, ev := range []gomatrixserverlib.PDU{gapEv, last} {
				if e.event(ev.EventID()) != nil {
					t.Fatalf("%s remote: %s stored", how, ev.EventID())
				}
			}
			// Still serving: a local message goes through.
			if _, err := alice.SendText(e.ctx, id.RoomID(roomID), "still here after "+how); err != nil {
				t.Fatal(err)
			}
			// The remote drops the unreachable events: the room goes on
			// from what the server has.
			rr.Last = prev
		})
	}
}

// TestTransactionOfChains: a transaction's PDUs of a room go to the
// room-server in one call; each keeps a result of its own (an event the
// auth rules refuse among accepted ones), a gap before a room's first PDU
// is filled before the PDUs that build on it, and PDUs of two rooms may
// interleave.
func TestTransactionOfChains(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	roomA, ra := e.joinedRoom(alice, "11")
	roomB, rb := e.joinedRoom(alice, "12")
	bob := e.remote.User("bob")
	a0 := ra.Message(bob, "a0") // never sent: fetched with /get_missing_events
	a1, a2, a3 := ra.Message(bob, "a1"), ra.Message(bob, "a2"), ra.Message(bob, "a3")
	b1, b2 := rb.Message(bob, "b1"), rb.Message(bob, "b2")
	empty := ""
	// Bob may not change the power levels: refused, on b2 like b3 (room
	// B has no gap, so all its PDUs are decided in the one call).
	bad := rb.Build(bob, "m.room.power_levels", &empty, map[string]any{"users": map[string]any{bob: 100}})
	b3 := rb.Message(bob, "b3")
	status, res := e.remote.Send(raws(b1, a1, b2, a2, bad, b3, a3))
	if status != 200 {
		t.Fatalf("send: %d", status)
	}
	for _, ev := range []gomatrixserverlib.PDU{a1, a2, a3, b1, b2, b3} {
		if r, ok := res[ev.EventID()]; !ok || r.Error != "" {
			t.Errorf("%s: result %+v (present %v)", ev.EventID(), r, ok)
		}
	}
	if r, ok := res[bad.EventID()]; !ok || r.Error == "" {
		t.Errorf("the refused power levels event: result %+v (present %v), want an error", r, ok)
	}
	for _, ev := range []gomatrixserverlib.PDU{a0, a1, a2, a3, b1, b2, b3} {
		if !e.accepted(ev.EventID()) {
			t.Errorf("%s not accepted", ev.EventID())
		}
	}
	if e.accepted(bad.EventID()) {
		t.Error("the refused power levels event was accepted")
	}
	syncUntil(t, alice, roomA, func(seen []string) error {
		return inOrder(seen, []string{bob + "|m.room.message|a0", bob + "|m.room.message|a1", bob + "|m.room.message|a2", bob + "|m.room.message|a3"})
	})
	syncUntil(t, alice, roomB, func(seen []string) error {
		return inOrder(seen, []string{bob + "|m.room.message|b1", bob + "|m.room.message|b2", bob + "|m.room.message|b3"})
	})
}
