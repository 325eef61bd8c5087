package push

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzPushRules parses an arbitrary stored m.push_rules content (as a
// client's PUTs or an old server version may have left it), compiles the
// merged rule set and evaluates an arbitrary event with it, for two
// recipients in turn with one memo (as the push consumer does) and again
// without one. Nothing may panic; the memoised outcome is the unmemoised
// one; the merged rules read back (marshal, merge again) unchanged; and
// the actions a matching rule returns are what validActions accepts or
// what the stored rule held.
func FuzzPushRules(f *testing.F) {
	for _, seed := range []struct{ rules, event string }{
		{``, `{"type":"m.room.message","sender":"@a:x","content":{"body":"hi alice"}}`},
		{`{"global":{"override":[{"rule_id":".m.rule.master","enabled":true,"actions":[]}]}}`, `{"type":"m.room.message","content":{}}`},
		{`{"global":{"content":[{"rule_id":"c","enabled":true,"pattern":"ex*ple?","actions":["notify",{"set_tweak":"sound","value":"default"}]}]}}`, `{"type":"m.room.message","sender":"@b:x","content":{"body":"An example! event"}}`},
		{`{"global":{"override":[{"rule_id":"x","enabled":true,"conditions":[{"kind":"event_property_is","key":"content.m\\.federate","value":false},{"kind":"room_member_count","is":">=2"}],"actions":["notify"]}]}}`, `{"type":"m.room.create","content":{"m.federate":false}}`},
		{`{"global":{"underride":[{"rule_id":"u","enabled":true,"conditions":[{"kind":"event_property_contains","key":"content.a","value":1},{"kind":"sender_notification_permission","key":"room"},{"kind":"contains_display_name"}],"actions":["dont_notify","coalesce"]}]}}`, `{"type":"t","content":{"a":[1,2],"body":"Alice"}}`},
		{`{"global":{"room":[{"rule_id":"!r:x","enabled":true,"actions":["notify"]}],"sender":[{"rule_id":"@a:x","enabled":false,"actions":["notify"]}]}}`, `{"type":"m.room.message","sender":"@a:x","content":{"body":"x"}}`},
		{`{"global":{"override":[{"rule_id":"g","enabled":true,"conditions":[{"kind":"event_match","key":"content.body","pattern":"[*]\\"}]}]}}`, `{"content":{"body":"[x]\\"}}`},
		{`{"global":{"override":null,"content":[{"rule_id":"c","enabled":true}]}}`, `{"content":{"body":1e400}}`},
		{`[]`, `[]`},
	} {
		f.Add([]byte(seed.rules), []byte(seed.event), 3, "Alice")
	}
	f.Fuzz(func(t *testing.T, stored, eventJSON []byte, members int, displayName string) {
		const alice, bob = "@alice:example.test", "@bob:example.test"
		rs := mergeRules(alice, stored)
		again, err := json.Marshal(pushRulesContent{Global: rs})
		if err != nil {
			t.Fatalf("merged rules do not marshal: %v", err)
		}
		reread := mergeRules(alice, again)
		b2, _ := json.Marshal(pushRulesContent{Global: reread})
		if !bytes.Equal(again, b2) {
			t.Fatalf("merged rules changed on a second merge:\n%s\n%s", again, b2)
		}
		ev, err := newPushEvent(eventJSON, "!room:example.test")
		if err != nil {
			return // not an event: the consumer never evaluates it
		}
		rules := map[string]compiledRules{alice: compileRules(&rs)}
		bobRules := defaultRules(bob)
		rules[bob] = compileRules(&bobRules)
		room := pushRoom{memberCount: members, senderLevel: int64(members), notifyLevels: map[string]int64{"room": 50}}
		memo := condMemo{}
		for _, u := range []string{bob, alice, bob} {
			name := displayName
			if u == bob {
				name = "Bob"
			}
			room.displayName = func() string { return name }
			withMemo := rules[u].evaluate(ev, &room, memo)
			without := rules[u].evaluate(ev, &room, nil)
			if (withMemo == nil) != (without == nil) || withMemo != nil && !bytes.Equal(withMemo.actionsJSON, without.actionsJSON) {
				t.Fatalf("%s: memoised evaluation differs from a fresh one", u)
			}
			if withMemo != nil {
				n, h, _ := Tweaks(withMemo.actions)
				if n != withMemo.notify || h != withMemo.highlight {
					t.Fatalf("%s: compiled notify/highlight %v/%v, actions say %v/%v", u, withMemo.notify, withMemo.highlight, n, h)
				}
			}
		}
	})
}

// FuzzValidActions checks the check of a client's actions (PUT
// /pushrules/.../actions): whatever it accepts, Tweaks reads without
// panicking, and an action list it accepts survives a store round trip.
func FuzzValidActions(f *testing.F) {
	for _, s := range []string{`["notify"]`, `["dont_notify"]`, `[{"set_tweak":"highlight","value":false}]`, `[{"set_tweak":""}]`, `[1]`, `["coalesce",{"set_tweak":"sound","value":{"a":[1]}}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var acts []json.RawMessage
		if json.Unmarshal(raw, &acts) != nil {
			return
		}
		if validActions(acts) != nil {
			return
		}
		Tweaks(acts)
		rule := pushRule{RuleID: "r", Enabled: true, Actions: acts}
		b, err := json.Marshal(pushRulesContent{Global: pushRuleset{Override: []pushRule{rule}}})
		if err != nil {
			t.Fatalf("accepted actions %s do not marshal: %v", raw, err)
		}
		got := mergeRules("@a:x", b)
		if len(got.Override) < 2 || got.Override[1].RuleID != "r" || len(got.Override[1].Actions) != len(acts) {
			t.Fatalf("accepted actions %s did not survive the store: %+v", raw, got.Override)
		}
	})
}
