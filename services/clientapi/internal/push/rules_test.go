package push

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
)

// Evaluator cases from the spec's condition descriptions and default
// rules (client-server API, "Push Rules").

func mustPushEvent(t *testing.T, ev string) *pushEvent {
	t.Helper()
	pe, err := newPushEvent([]byte(ev), "!room:example.test")
	if err != nil {
		t.Fatal(err)
	}
	return pe
}

func TestPushConditions(t *testing.T) {
	topic := func(v string) string {
		return `{"type":"m.room.topic","state_key":"","sender":"@a:x","content":{"topic":` + v + `}}`
	}
	body := func(v string) string {
		return `{"type":"m.room.message","sender":"@a:x","content":{"body":"` + v + `"}}`
	}
	cond := func(c string) pushCondition {
		var pc pushCondition
		if err := json.Unmarshal([]byte(c), &pc); err != nil {
			t.Fatal(err)
		}
		return pc
	}
	lunch := `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`
	example := `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`
	federate := `{"kind":"event_property_is","key":"content.m\\.federate","value":true}`
	aliases := `{"kind":"event_property_contains","key":"content.alt_aliases","value":"#myroom:example.com"}`
	create := func(v string) string { return `{"type":"m.room.create","content":{"m.federate":` + v + `}}` }
	canon := func(v string) string { return `{"type":"m.room.canonical_alias","content":{"alt_aliases":` + v + `}}` }
	room := &pushRoom{memberCount: 2, displayName: func() string { return "Bob Smith" }, senderLevel: 50, notifyLevels: map[string]int64{}}
	cases := []struct {
		name, cond, event string
		want              bool
	}{
		{"glob matches whole value", lunch, topic(`"Lunch plans"`), true},
		{"case-insensitive, * may be empty", lunch, topic(`"LUNCH"`), true},
		{"leading space", lunch, topic(`" lunch"`), false},
		{"? needs a character", lunch, topic(`"lunc"`), false},
		{"null is not a string", lunch, topic(`null`), false},
		{"number is not a string", `{"kind":"event_match","key":"content.topic","pattern":"*"}`, topic(`5`), false},
		{"absent property", `{"kind":"event_match","key":"content.nope","pattern":"*"}`, topic(`"x"`), false},
		{"no implicit contains", `{"kind":"event_match","key":"content.topic","pattern":"unc"}`, topic(`"lunch"`), false},
		{"body: word inside", example, body("An example event."), true},
		{"body: whole body", example, body("exple"), true},
		{"body: across words, - separates", example, body("An exciting triple-whammy"), true},
		{"body: not at a word boundary", example, body("Anexample"), false},
		{"property_is true", federate, create(`true`), true},
		{"property_is no casting from string", federate, create(`"true"`), false},
		{"property_is no casting from number", federate, create(`1`), false},
		{"property_is integer", `{"kind":"event_property_is","key":"content.n","value":3}`, `{"content":{"n":3}}`, true},
		{"property_is null", `{"kind":"event_property_is","key":"content.n","value":null}`, `{"content":{"n":null}}`, true},
		{"property_is null vs absent", `{"kind":"event_property_is","key":"content.n","value":null}`, `{"content":{}}`, false},
		{"property_is not compound", `{"kind":"event_property_is","key":"content.n","value":[1]}`, `{"content":{"n":[1]}}`, false},
		{"escaped dot", `{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}`,
			`{"content":{"m.relates_to":{"rel_type":"m.replace"}}}`, true},
		{"unescaped dot is a path", `{"kind":"event_property_is","key":"content.m.relates_to.rel_type","value":"m.replace"}`,
			`{"content":{"m.relates_to":{"rel_type":"m.replace"}}}`, false},
		{"contains", aliases, canon(`["#somewhere:example.org","#myroom:example.com"]`), true},
		{"contains: partial values do not match", aliases, canon(`[":example.com"]`), false},
		{"contains: not an array", aliases, canon(`"#myroom:example.com"`), false},
		{"display name", `{"kind":"contains_display_name"}`, body("hey bob smith, lunch?"), true},
		{"display name inside a word", `{"kind":"contains_display_name"}`, body("xbob smithy"), false},
		{"member count ==", `{"kind":"room_member_count","is":"2"}`, body("x"), true},
		{"member count <", `{"kind":"room_member_count","is":"<2"}`, body("x"), false},
		{"member count >=", `{"kind":"room_member_count","is":">=2"}`, body("x"), true},
		{"member count garbage", `{"kind":"room_member_count","is":"~2"}`, body("x"), false},
		{"notification permission default 50", `{"kind":"sender_notification_permission","key":"room"}`, body("x"), true},
		{"unknown kind never matches", `{"kind":"org.example.new"}`, body("x"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := cond(c.cond).matches(mustPushEvent(t, c.event), room); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
	low := &pushRoom{senderLevel: 10, notifyLevels: map[string]int64{"room": 20}}
	if cond(`{"kind":"sender_notification_permission","key":"room"}`).matches(mustPushEvent(t, body("x")), low) {
		t.Fatal("a sender below notifications.room must not match")
	}
}

func TestDefaultRules(t *testing.T) {
	const me = "@bob:example.test"
	rules := mergeRules(me, nil)
	type outcome struct{ notify, highlight bool }
	run := func(ev string, room pushRoom) outcome {
		t.Helper()
		n, h, _ := Tweaks(rules.evaluate(mustPushEvent(t, ev), &room))
		return outcome{n, h}
	}
	group := pushRoom{memberCount: 5, senderLevel: 0, notifyLevels: map[string]int64{}}
	dm := pushRoom{memberCount: 2, senderLevel: 0, notifyLevels: map[string]int64{}}
	mod := pushRoom{memberCount: 5, senderLevel: 100, notifyLevels: map[string]int64{}}
	msg := `{"type":"m.room.message","sender":"@a:example.test","content":{"msgtype":"m.text","body":"hi"}}`
	cases := []struct {
		name string
		ev   string
		room pushRoom
		want outcome
	}{
		{"message", msg, group, outcome{true, false}},
		{"one to one", msg, dm, outcome{true, false}},
		{"notice suppressed", `{"type":"m.room.message","content":{"msgtype":"m.notice","body":"x"}}`, group, outcome{}},
		{"user mention highlights", `{"type":"m.room.message","content":{"body":"x","m.mentions":{"user_ids":["` + me + `"]}}}`, group, outcome{true, true}},
		{"other user's mention", `{"type":"m.room.message","content":{"body":"x","m.mentions":{"user_ids":["@c:x"]}}}`, group, outcome{true, false}},
		{"room mention by a moderator", `{"type":"m.room.message","content":{"body":"x","m.mentions":{"room":true}}}`, mod, outcome{true, true}},
		{"room mention without power", `{"type":"m.room.message","content":{"body":"x","m.mentions":{"room":true}}}`, group, outcome{true, false}},
		{"edit suppressed", `{"type":"m.room.message","content":{"body":"x","m.relates_to":{"rel_type":"m.replace","event_id":"$e"}}}`, group, outcome{}},
		{"reaction suppressed", `{"type":"m.reaction","content":{}}`, group, outcome{}},
		{"invite for me", `{"type":"m.room.member","state_key":"` + me + `","content":{"membership":"invite"}}`, group, outcome{true, false}},
		{"other member events", `{"type":"m.room.member","state_key":"@c:x","content":{"membership":"join"}}`, group, outcome{}},
		{"tombstone highlights", `{"type":"m.room.tombstone","state_key":"","content":{}}`, group, outcome{true, true}},
		{"encrypted", `{"type":"m.room.encrypted","content":{}}`, group, outcome{true, false}},
		{"call", `{"type":"m.call.invite","content":{}}`, group, outcome{true, false}},
		{"other types", `{"type":"m.room.topic","state_key":"","content":{"topic":"x"}}`, group, outcome{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := run(c.ev, c.room); got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
	// The one-to-one rule carries the default sound.
	_, _, tweaks := Tweaks(rules.evaluate(mustPushEvent(t, msg), &dm))
	if tweaks["sound"] != "default" {
		t.Fatalf("one-to-one tweaks %v", tweaks)
	}
	if n := len(rules.Override); n != 10 || rules.Override[0].RuleID != ".m.rule.master" || len(rules.Underride) != 5 {
		t.Fatalf("default rules: %d override, %d underride", n, len(rules.Underride))
	}
}

func TestMergeRules(t *testing.T) {
	const me = "@bob:example.test"
	stored := `{"global":{"override":[
		{"rule_id":".m.rule.master","default":true,"enabled":true,"actions":[]},
		{"rule_id":"mine","enabled":true,"actions":["notify","dont_notify"],"conditions":[]},
		{"rule_id":".m.rule.gone","default":true,"enabled":true,"actions":[]},
		{"rule_id":".m.rule.suppress_notices","default":true,"enabled":false,"actions":["notify"]}
	],"sender":[{"rule_id":"@a:x","enabled":true,"actions":[]}]}}`
	rs := mergeRules(me, []byte(stored))
	ids := []string{}
	for _, r := range rs.Override {
		ids = append(ids, r.RuleID)
	}
	if ids[0] != ".m.rule.master" || ids[1] != "mine" || ids[2] != ".m.rule.suppress_notices" || len(ids) != 11 {
		t.Fatalf("override order %v", ids)
	}
	if !rs.Override[0].Enabled || rs.Override[2].Enabled || string(rs.Override[2].Actions[0]) != `"notify"` {
		t.Fatalf("stored enabled/actions of defaults not kept: %+v %+v", rs.Override[0], rs.Override[2])
	}
	if len(rs.Override[1].Actions) != 2 || string(rs.Override[1].Actions[1]) != `"dont_notify"` {
		t.Fatalf("stored actions not kept as given: %s", rs.Override[1].Actions)
	}
	// The enabled master rule silences everything, user rules included.
	if acts := rs.evaluate(mustPushEvent(t, `{"type":"m.room.message","sender":"@a:x","content":{"body":"x"}}`), &pushRoom{}); len(acts) != 0 {
		t.Fatalf("master rule: %s", acts)
	}
	// Without it, the user's rule with no conditions matches everything.
	rs.Override[0].Enabled = false
	if acts := rs.evaluate(mustPushEvent(t, `{"type":"m.room.topic","content":{}}`), &pushRoom{}); len(acts) != 1 {
		t.Fatalf("user override rule: %s", acts)
	}
	rs.Override[1].Enabled = false
	// The sender rule with no actions silences @a:x.
	if acts := rs.evaluate(mustPushEvent(t, `{"type":"m.room.message","sender":"@a:x","content":{"body":"x"}}`), &pushRoom{}); len(acts) != 0 {
		t.Fatalf("sender rule: %s", acts)
	}
}

// The rule cache reuses a user's rules only while their stored
// m.push_rules keeps its position.
func TestRuleCacheFollowsStoredRules(t *testing.T) {
	var c ruleCache
	const user = "@alice:example.test"
	if _, ok := c.get(user, 0); ok {
		t.Fatal("empty cache hit")
	}
	first := c.put(user, 0, nil)
	if again, ok := c.get(user, 0); !ok || &again[0] != &first[0] {
		t.Fatal("unchanged rules were rebuilt")
	}
	if _, ok := c.get("@bob:example.test", 0); ok {
		t.Fatal("two users share one rule set")
	}
	if _, ok := c.get(user, 7); ok {
		t.Fatal("rules stored at a new position served from the cache")
	}
	stored := []byte(`{"global":{"override":[{"rule_id":".m.rule.master","default":true,"enabled":true,"actions":[]}]}}`)
	changed := c.put(user, 7, stored)
	msg := mustPushEvent(t, `{"type":"m.room.message","sender":"@a:x","content":{"body":"x"}}`)
	room := &pushRoom{memberCount: 5}
	if r := first.evaluate(msg, room, nil); r == nil || !r.notify {
		t.Fatalf("default rules: %+v", r)
	}
	if r := changed.evaluate(msg, room, nil); r == nil || r.notify {
		t.Fatalf("the enabled master rule must silence everything: %+v", r)
	}
	if again, ok := c.get(user, 7); !ok || &again[0] != &changed[0] {
		t.Fatal("new rules not cached")
	}
}

// One event evaluated for several recipients with one memo: what depends
// on the recipient (their ID in the default rules, their display name,
// their own rules) still decides per recipient.
func TestEvaluateMemoPerRecipient(t *testing.T) {
	const alice, bob, carol = "@alice:example.test", "@bob:example.test", "@carol:example.test"
	var c ruleCache
	// carol has a rule on her display name that highlights.
	carolRules := `{"global":{"override":[{"rule_id":"name","enabled":true,
		"conditions":[{"kind":"contains_display_name"}],"actions":["notify",{"set_tweak":"highlight"}]}]}}`
	rules := map[string]compiledRules{
		alice: c.put(alice, 0, nil),
		bob:   c.put(bob, 0, nil),
		carol: c.put(carol, 3, []byte(carolRules)),
	}
	names := map[string]string{alice: "Alice", bob: "Bob", carol: "Carol"}
	type outcome struct{ notify, highlight bool }
	run := func(ev string) map[string]outcome {
		t.Helper()
		pe := mustPushEvent(t, ev)
		memo := condMemo{}
		room := pushRoom{memberCount: 4, notifyLevels: map[string]int64{}}
		got := map[string]outcome{}
		for _, u := range []string{alice, bob, carol, alice} { // alice twice: a memo hit
			room.displayName = func() string { return names[u] }
			var o outcome
			if r := rules[u].evaluate(pe, &room, memo); r != nil {
				o = outcome{r.notify, r.highlight}
			}
			if prev, ok := got[u]; ok && prev != o {
				t.Fatalf("%s: %+v then %+v", u, prev, o)
			}
			got[u] = o
		}
		return got
	}
	mention := run(`{"type":"m.room.message","sender":"@d:x","content":{"body":"hi Carol",
		"m.mentions":{"user_ids":["` + bob + `"]}}}`)
	want := map[string]outcome{alice: {true, false}, bob: {true, true}, carol: {true, true}}
	if fmt.Sprint(mention) != fmt.Sprint(want) {
		t.Fatalf("mention: got %v, want %v", mention, want)
	}
	invite := run(`{"type":"m.room.member","sender":"@d:x","state_key":"` + alice + `","content":{"membership":"invite"}}`)
	want = map[string]outcome{alice: {true, false}, bob: {}, carol: {}}
	if fmt.Sprint(invite) != fmt.Sprint(want) {
		t.Fatalf("invite: got %v, want %v", invite, want)
	}
	notice := run(`{"type":"m.room.message","sender":"@d:x","content":{"msgtype":"m.notice","body":"Carol"}}`)
	want = map[string]outcome{alice: {}, bob: {}, carol: {true, true}}
	if fmt.Sprint(notice) != fmt.Sprint(want) {
		t.Fatalf("notice: got %v, want %v", notice, want)
	}
}

// The power cache answers as powerFor does, and a changed create or power
// levels event (same room and sender) is decoded again.
func TestPowerCache(t *testing.T) {
	create := []byte(`{"type":"m.room.create","sender":"@c:x","content":{"room_version":"10"}}`)
	pl := func(alice int, room int) []byte {
		return []byte(fmt.Sprintf(`{"type":"m.room.power_levels","content":{"users":{"@alice:x":%d},"notifications":{"room":%d}}}`, alice, room))
	}
	var c powerCache
	check := func(create, power []byte, sender string, wantLevel, wantRoom int64) {
		t.Helper()
		level, notify := c.get("!r:x", create, power, sender)
		plainLevel, plainNotify := powerFor(create, power, sender)
		if level != wantLevel || notify["room"] != wantRoom || level != plainLevel || notify["room"] != plainNotify["room"] {
			t.Fatalf("%s: level %d, room %d; want %d, %d (powerFor: %d, %d)", sender, level, notify["room"], wantLevel, wantRoom, plainLevel, plainNotify["room"])
		}
	}
	check(create, pl(50, 50), "@alice:x", 50, 50)
	check(create, pl(50, 50), "@alice:x", 50, 50) // cached
	check(create, pl(100, 20), "@alice:x", 100, 20)
	check(create, nil, "@alice:x", 0, 0)
	check(create, nil, "@c:x", 100, 0)
	check(nil, nil, "@c:x", 0, 0)
	check(create, pl(100, 20), "@bob:x", 0, 20)
	// One entry per room serves every sender.
	check(create, pl(100, 20), "@alice:x", 100, 20)
	check(create, []byte(`{"type":"m.room.power_levels","content":{"users":{"@alice:x":"high"},"notifications":{"room":5}}}`), "@alice:x", 0, 0)
	v12 := []byte(`{"type":"m.room.create","sender":"@c:x","content":{"room_version":"12","additional_creators":["@d:x"]}}`)
	check(v12, pl(50, 30), "@c:x", math.MaxInt64, 30)
	check(v12, pl(50, 30), "@d:x", math.MaxInt64, 30)
	check(v12, pl(50, 30), "@alice:x", 50, 30)
	check(v12, nil, "@d:x", math.MaxInt64, 0)
	check(v12, nil, "@e:x", 0, 0)
}
