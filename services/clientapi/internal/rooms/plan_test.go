package rooms

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// planned is one initial event of a plan, decoded for assertions.
type planned struct {
	Type     string
	StateKey string
	Content  map[string]any
}

func decodePlan(t *testing.T, p roomPlan) []planned {
	t.Helper()
	var out []planned
	for _, e := range p.Events {
		var c map[string]any
		if err := json.Unmarshal(e.GetContent(), &c); err != nil {
			t.Fatalf("content of %s: %v", e.GetType(), err)
		}
		if e.StateKey == nil {
			t.Fatalf("%s has no state key", e.GetType())
		}
		out = append(out, planned{Type: e.GetType(), StateKey: e.GetStateKey(), Content: c})
	}
	return out
}

func stateKeys(events []planned) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.Type+"|"+e.StateKey)
	}
	return out
}

func find(events []planned, typ, key string) *planned {
	for i := range events {
		if events[i].Type == typ && events[i].StateKey == key {
			return &events[i]
		}
	}
	return nil
}

func strptr(s string) *string { return &s }

const testServerName = "example.test"

func TestPlanRoomOrderAndPresets(t *testing.T) {
	const alice, bob, carol = "@alice:example.test", "@bob:example.test", "@carol:other.test"
	cases := []struct {
		name        string
		req         createRoomRequest
		version     string
		wantKeys    []string
		joinRule    string
		guest       string
		invitePL    float64
		usersPL     map[string]any
		tombstone   float64
		addCreators []any
	}{
		{
			name:    "private default v11 with everything",
			version: "11",
			req: createRoomRequest{
				RoomAliasName: "lounge", Name: strptr("Lounge"), Topic: strptr("Chat"),
				Invite:       []string{bob, carol},
				InitialState: []initialStateEvent{{Type: "m.room.encryption", Content: json.RawMessage(`{"algorithm":"m.megolm.v1.aes-sha2"}`)}},
				IsDirect:     true,
			},
			wantKeys: []string{
				"m.room.member|" + alice, "m.room.power_levels|", "m.room.canonical_alias|",
				"m.room.join_rules|", "m.room.history_visibility|", "m.room.guest_access|",
				"m.room.encryption|", "m.room.name|", "m.room.topic|",
				"m.room.member|" + bob, "m.room.member|" + carol,
			},
			joinRule: "invite", guest: "can_join", invitePL: 0,
			usersPL: map[string]any{alice: 100.0}, tombstone: 100,
		},
		{
			name:     "public by visibility v12",
			version:  "12",
			req:      createRoomRequest{Visibility: "public"},
			wantKeys: []string{"m.room.member|" + alice, "m.room.power_levels|", "m.room.join_rules|", "m.room.history_visibility|", "m.room.guest_access|"},
			joinRule: "public", guest: "forbidden", invitePL: 50,
			usersPL: map[string]any{}, tombstone: 150,
		},
		{
			name:    "trusted private v11: invitees get creator power",
			version: "11",
			req:     createRoomRequest{Preset: "trusted_private_chat", Invite: []string{bob}},
			wantKeys: []string{"m.room.member|" + alice, "m.room.power_levels|", "m.room.join_rules|",
				"m.room.history_visibility|", "m.room.guest_access|", "m.room.member|" + bob},
			joinRule: "invite", guest: "can_join", invitePL: 0,
			usersPL: map[string]any{alice: 100.0, bob: 100.0}, tombstone: 100,
		},
		{
			name:    "trusted private v12: invitees become additional creators",
			version: "12",
			req: createRoomRequest{Preset: "trusted_private_chat", Invite: []string{bob},
				CreationContent: json.RawMessage(`{"additional_creators":["@dave:example.test"],"creator":"@evil:x","m.federate":false}`)},
			wantKeys: []string{"m.room.member|" + alice, "m.room.power_levels|", "m.room.join_rules|",
				"m.room.history_visibility|", "m.room.guest_access|", "m.room.member|" + bob},
			joinRule: "invite", guest: "can_join", invitePL: 0,
			usersPL: map[string]any{}, tombstone: 150,
			addCreators: []any{"@dave:example.test", bob},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.RoomVersion = c.version
			plan, err := planRoom(c.req, alice, testServerName, "10")
			if err != nil {
				t.Fatal(err)
			}
			if plan.Version != c.version {
				t.Fatalf("version %q, want %q", plan.Version, c.version)
			}
			events := decodePlan(t, plan)
			if got := stateKeys(events); !slices.Equal(got, c.wantKeys) {
				t.Fatalf("events\n got %v\nwant %v", got, c.wantKeys)
			}
			if m := find(events, "m.room.member", alice); m.Content["membership"] != "join" {
				t.Fatalf("creator membership %v", m.Content)
			}
			if jr := find(events, "m.room.join_rules", ""); jr.Content["join_rule"] != c.joinRule {
				t.Fatalf("join_rule %v, want %s", jr.Content, c.joinRule)
			}
			if hv := find(events, "m.room.history_visibility", ""); hv.Content["history_visibility"] != "shared" {
				t.Fatalf("history_visibility %v", hv.Content)
			}
			if ga := find(events, "m.room.guest_access", ""); ga.Content["guest_access"] != c.guest {
				t.Fatalf("guest_access %v, want %s", ga.Content, c.guest)
			}
			pl := find(events, "m.room.power_levels", "").Content
			if pl["invite"] != c.invitePL {
				t.Fatalf("invite PL %v, want %v", pl["invite"], c.invitePL)
			}
			users := pl["users"].(map[string]any)
			if len(users) != len(c.usersPL) {
				t.Fatalf("users %v, want %v", users, c.usersPL)
			}
			for u, lvl := range c.usersPL {
				if users[u] != lvl {
					t.Fatalf("users %v, want %v", users, c.usersPL)
				}
			}
			if ts := pl["events"].(map[string]any)["m.room.tombstone"]; ts != c.tombstone {
				t.Fatalf("tombstone PL %v, want %v", ts, c.tombstone)
			}
			var create map[string]any
			if err := json.Unmarshal(plan.CreateContent, &create); err != nil {
				t.Fatal(err)
			}
			if _, ok := create["creator"]; ok {
				t.Fatalf("client-supplied creator kept: %v", create)
			}
			if c.addCreators != nil {
				if got, _ := create["additional_creators"].([]any); !slices.Equal(got, c.addCreators) {
					t.Fatalf("additional_creators %v, want %v", got, c.addCreators)
				}
			} else if _, ok := create["additional_creators"]; ok {
				t.Fatalf("unexpected additional_creators: %v", create)
			}
		})
	}
}

func TestPlanRoomOverrides(t *testing.T) {
	const alice = "@alice:example.test"
	req := createRoomRequest{
		RoomVersion: "10",
		Name:        strptr("Real name"),
		InitialState: []initialStateEvent{
			{Type: "m.room.join_rules", Content: json.RawMessage(`{"join_rule":"public"}`)},
			{Type: "m.room.name", Content: json.RawMessage(`{"name":"overridden"}`)},
			{Type: "org.example.custom", StateKey: "k", Content: json.RawMessage(`{"x":1}`)},
		},
		PowerLevelContentOverride: json.RawMessage(`{"events_default":10,"users":{"@alice:example.test":100,"@bob:example.test":50}}`),
	}
	plan, err := planRoom(req, alice, testServerName, "11")
	if err != nil {
		t.Fatal(err)
	}
	events := decodePlan(t, plan)
	want := []string{"m.room.member|" + alice, "m.room.power_levels|", "m.room.history_visibility|",
		"m.room.guest_access|", "m.room.join_rules|", "org.example.custom|k", "m.room.name|"}
	if got := stateKeys(events); !slices.Equal(got, want) {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}
	if jr := find(events, "m.room.join_rules", ""); jr.Content["join_rule"] != "public" {
		t.Fatalf("initial_state join rule not used: %v", jr.Content)
	}
	if n := find(events, "m.room.name", ""); n.Content["name"] != "Real name" {
		t.Fatalf("name %v", n.Content)
	}
	pl := find(events, "m.room.power_levels", "").Content
	if pl["events_default"] != 10.0 || pl["users"].(map[string]any)["@bob:example.test"] != 50.0 || pl["state_default"] != 50.0 {
		t.Fatalf("override not applied on top of defaults: %v", pl)
	}

	// A power levels event in initial_state replaces the default one, in its place.
	req = createRoomRequest{InitialState: []initialStateEvent{
		{Type: "m.room.power_levels", Content: json.RawMessage(`{"users":{"@alice:example.test":100}}`)},
	}}
	plan, err = planRoom(req, alice, testServerName, "11")
	if err != nil {
		t.Fatal(err)
	}
	events = decodePlan(t, plan)
	if events[1].Type != "m.room.power_levels" || len(events[1].Content) != 1 {
		t.Fatalf("initial_state power levels not used as is: %+v", events[1])
	}
	if plan.Version != "11" {
		t.Fatalf("default version not used: %q", plan.Version)
	}
}

func TestPlanRoomRejects(t *testing.T) {
	cases := []struct {
		name    string
		req     createRoomRequest
		errcode string
	}{
		{"unknown version", createRoomRequest{RoomVersion: "999"}, "M_UNSUPPORTED_ROOM_VERSION"},
		{"unstable version", createRoomRequest{RoomVersion: "org.matrix.msc4014"}, "M_UNSUPPORTED_ROOM_VERSION"},
		{"alias with colon", createRoomRequest{RoomAliasName: "a:b"}, "M_INVALID_PARAM"},
		{"alias with space", createRoomRequest{RoomAliasName: "a b"}, "M_INVALID_PARAM"},
		{"bad preset", createRoomRequest{Preset: "party"}, "M_INVALID_PARAM"},
		{"bad visibility", createRoomRequest{Visibility: "secret"}, "M_INVALID_PARAM"},
		{"bad invite", createRoomRequest{Invite: []string{"bob"}}, "M_INVALID_PARAM"},
		{"state without type", createRoomRequest{InitialState: []initialStateEvent{{Content: json.RawMessage(`{}`)}}}, "M_BAD_JSON"},
		{"state content not object", createRoomRequest{InitialState: []initialStateEvent{{Type: "x", Content: json.RawMessage(`[1]`)}}}, "M_BAD_JSON"},
		{"creation_content not object", createRoomRequest{CreationContent: json.RawMessage(`"x"`)}, "M_BAD_JSON"},
		{"override not object", createRoomRequest{PowerLevelContentOverride: json.RawMessage(`5`)}, "M_BAD_JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := planRoom(c.req, "@alice:example.test", testServerName, "11")
			var me *matrixhttp.Error
			if !errors.As(err, &me) || me.ErrCode != c.errcode {
				t.Fatalf("got %v, want %s", err, c.errcode)
			}
		})
	}
}
