package clientapi_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestHistoryVisibilityMatrix checks the spec's visibility rules for every
// history_visibility value against users with different membership
// timelines, through /event, /messages and /sync. In each room:
//
//	jb and lf join; E1; ij is invited; E2; ij joins; lf leaves; E3; ja joins.
//
// nv is never a member.
func TestHistoryVisibilityMatrix(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	users := map[string]*mautrix.Client{}
	for _, name := range []string{"jb", "ij", "ja", "lf", "nv"} {
		users[name] = newUser(t, hs, name)
	}
	// want[visibility][user] lists which of E1, E2, E3 the user may see.
	want := map[string]map[string]string{
		"world_readable": {"jb": "123", "ij": "123", "ja": "123", "lf": "123", "nv": "123"},
		"shared":         {"jb": "123", "ij": "123", "ja": "123", "lf": "12", "nv": ""},
		"invited":        {"jb": "123", "ij": "23", "ja": "", "lf": "12", "nv": ""},
		"joined":         {"jb": "123", "ij": "3", "ja": "", "lf": "12", "nv": ""},
	}
	for _, vis := range []string{"world_readable", "shared", "invited", "joined"} {
		t.Run(vis, func(t *testing.T) {
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID
			if _, err := alice.SendStateEvent(ctx, roomID, event.StateHistoryVisibility, "",
				map[string]any{"history_visibility": vis}); err != nil {
				t.Fatal(err)
			}
			join := func(name string) {
				t.Helper()
				if _, err := users[name].JoinRoom(ctx, roomID.String(), nil); err != nil {
					t.Fatalf("%s joins: %v", name, err)
				}
			}
			join("jb")
			join("lf")
			events := map[string]id.EventID{"1": sendText(t, alice, roomID, "E1")}
			if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: users["ij"].UserID}); err != nil {
				t.Fatal(err)
			}
			events["2"] = sendText(t, alice, roomID, "E2")
			join("ij")
			if _, err := users["lf"].LeaveRoom(ctx, roomID); err != nil {
				t.Fatal(err)
			}
			events["3"] = sendText(t, alice, roomID, "E3")
			join("ja")
			last := sendText(t, alice, roomID, "end")
			caughtUp(t, alice, roomID, last)

			for name, cli := range users {
				visible := want[vis][name]
				// /event: visible events are served, the others are 404.
				for n, eventID := range events {
					ev, err := cli.GetEvent(ctx, roomID, eventID)
					if strings.Contains(visible, n) {
						if err != nil || bodyOf(ev) != "E"+n {
							t.Errorf("%s: /event E%s: %v %v, want it visible", name, n, ev, err)
						}
					} else if !errors.Is(err, mautrix.MNotFound) {
						t.Errorf("%s: /event E%s: %v, want M_NOT_FOUND", name, n, err)
					}
				}
				// /messages: exactly the visible events (a never-member of a
				// room that is not world readable is refused).
				msgs, err := cli.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 100)
				if name == "nv" && vis != "world_readable" {
					if !errors.Is(err, mautrix.MForbidden) {
						t.Errorf("nv: /messages: %v, want M_FORBIDDEN", err)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: /messages: %v", name, err)
					continue
				}
				if got := seenBodies(msgs.Chunk); got != visible {
					t.Errorf("%s: /messages shows E%q, want E%q", name, got, visible)
				}
			}

			// State: a never-member may read a world_readable room's state only.
			var hv map[string]any
			err = users["nv"].StateEvent(ctx, roomID, event.StateHistoryVisibility, "", &hv)
			if vis == "world_readable" {
				if err != nil || hv["history_visibility"] != vis {
					t.Errorf("nv: state of a world_readable room: %v %v", hv, err)
				}
			} else if !errors.Is(err, mautrix.MForbidden) {
				t.Errorf("nv: state: %v, want M_FORBIDDEN", err)
			}

			// /sync: the initial timeline of joined users and the leave
			// section of the user who left hold only what they may see.
			for _, name := range []string{"jb", "ij", "ja", "lf"} {
				resp, err := users[name].SyncRequest(ctx, 0, "", `{"room":{"include_leave":true,"timeline":{"limit":100}}}`, false, "")
				if err != nil {
					t.Fatal(err)
				}
				var timeline []*event.Event
				if name == "lf" {
					room := resp.Rooms.Leave[roomID]
					if room == nil {
						t.Fatalf("lf: room not in the leave section")
					}
					timeline = room.Timeline.Events
				} else if room := resp.Rooms.Join[roomID]; room != nil {
					timeline = room.Timeline.Events
				} else {
					t.Fatalf("%s: room not in the join section", name)
				}
				expect := want[vis][name]
				if name == "lf" {
					// The leave section ends at the leave, whatever the visibility.
					expect = strings.ReplaceAll(expect, "3", "")
				}
				if got := seenBodies(timeline); got != expect {
					t.Errorf("%s: /sync timeline shows E%q, want E%q", name, got, expect)
				}
				// Everyone sees their own join.
				if !slices.ContainsFunc(timeline, func(e *event.Event) bool {
					return e.Type == event.StateMember && e.GetStateKey() == users[name].UserID.String()
				}) {
					t.Errorf("%s: own membership event missing from the /sync timeline", name)
				}
			}
		})
	}
}

// seenBodies returns which of E1, E2, E3 the events contain, as "123".
func seenBodies(events []*event.Event) string {
	var out []string
	for _, e := range events {
		if b := bodyOf(e); len(b) == 2 && b[0] == 'E' {
			out = append(out, b[1:])
		}
	}
	slices.Sort(out)
	return strings.Join(out, "")
}
