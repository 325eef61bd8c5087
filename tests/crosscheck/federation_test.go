//go:build goexperiment.jsonv2 || go1.27

package crosscheck

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	jsonv2 "encoding/json/v2"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix/federation/pdu"
	"maunium.net/go/mautrix/id"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// TestLibrariesAgreeOnFederationPaths checks what the room-server hands
// the federation endpoints against mautrix: the redacted copies of events
// a server may not see (FilterEventsForServer) are mautrix's redactions,
// and this server's signature on a remote user's join (SignJoin, after a
// make_join template) verifies with mautrix while the joining server's
// own signature is kept.
func TestLibrariesAgreeOnFederationPaths(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	_, remoteKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const remote = "far.test"
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			roomID, ids := buildRoom(t, e, version)
			rv := id.RoomVersion(version)
			// far.test never had a user in the room: with history
			// "shared" it sees the state events whole and the rest
			// redacted.
			filtered, err := e.rooms.FilterEventsForServer(ctx, &roomserverv1.FilterEventsForServerRequest{ServerName: remote, EventIds: ids})
			if err != nil {
				t.Fatal(err)
			}
			redacted := 0
			whole := fetch(t, e, ids)
			for _, ev := range filtered.Events {
				if !ev.RedactedForServer {
					continue
				}
				redacted++
				var p pdu.PDU
				if err := jsonv2.Unmarshal(whole[ev.EventId].EventJson, &p); err != nil {
					t.Fatal(err)
				}
				theirs, err := jsonv2.Marshal(p.Clone().Redact(rv))
				if err != nil {
					t.Fatal(err)
				}
				if redactsKeptByMautrix(rv, p.Type) {
					if !onlyDifferenceIsRedacts(t, ev.EventJson, theirs) {
						t.Errorf("%s: redacted copies differ beyond the known deviation", ev.EventId)
					}
					continue
				}
				if !sameJSON(t, ev.EventJson, theirs) {
					t.Errorf("%s: redacted for %s:\n room-server %s\n mautrix     %s", ev.EventId, remote, ev.EventJson, theirs)
				}
			}
			if redacted == 0 {
				t.Fatal("nothing was redacted for a server that was never in the room")
			}

			// A remote user's join: the template, signed by far.test, then
			// countersigned here.
			ron := "@ron:" + remote
			tmpl, err := e.rooms.MakeMembershipEvent(ctx, &roomserverv1.MakeMembershipEventRequest{RoomId: roomID, UserId: ron,
				Membership: "join", SupportedRoomVersions: []string{version}, Origin: remote})
			if err != nil || tmpl.Refusal != roomserverv1.Refusal_REFUSAL_NONE {
				t.Fatalf("make_join: %v %s %s", err, tmpl.GetRefusal(), tmpl.GetReason())
			}
			var fields struct {
				RoomID     string          `json:"room_id"`
				Content    json.RawMessage `json:"content"`
				PrevEvents []string        `json:"prev_events"`
				AuthEvents []string        `json:"auth_events"`
				Depth      int64           `json:"depth"`
			}
			if err := json.Unmarshal(tmpl.EventTemplate, &fields); err != nil {
				t.Fatal(err)
			}
			verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
			join, err := verImpl.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{SenderID: ron, RoomID: fields.RoomID,
				Type: "m.room.member", StateKey: &ron, PrevEvents: fields.PrevEvents, AuthEvents: fields.AuthEvents,
				Depth: fields.Depth, Content: spec.RawJSON(fields.Content), Version: verImpl}).Build(time.Now(), spec.ServerName(remote), "ed25519:far", remoteKey)
			if err != nil {
				t.Fatal(err)
			}
			signed, err := e.rooms.SignJoin(ctx, &roomserverv1.SignJoinRequest{RoomId: roomID, EventJson: join.JSON()})
			if err != nil || signed.Refusal != roomserverv1.Refusal_REFUSAL_NONE {
				t.Fatalf("SignJoin: %v %s", err, signed.GetReason())
			}
			var p pdu.PDU
			if err := jsonv2.Unmarshal(signed.EventJson, &p); err != nil {
				t.Fatal(err)
			}
			if got, err := p.GetEventID(rv); err != nil || string(got) != join.EventID() || signed.EventId != join.EventID() {
				t.Fatalf("countersigning changed the event ID: %s %s (%v), was %s", got, signed.EventId, err, join.EventID())
			}
			if err := p.VerifySignature(rv, serverName, e.getKey); err != nil {
				t.Fatalf("mautrix rejects this server's signature on the join: %v", err)
			}
			farKey := func(server string, keyID id.KeyID, _ time.Time) (id.SigningKey, time.Time, error) {
				return id.SigningKey(encodeSig(remoteKey.Public().(ed25519.PublicKey))), time.Now().Add(time.Hour), nil
			}
			if err := p.VerifySignature(rv, remote, farKey); err != nil {
				t.Fatalf("the joining server's signature was lost: %v", err)
			}
		})
	}
}
