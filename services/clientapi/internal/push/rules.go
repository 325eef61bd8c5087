package push

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Push rules (spec v1.19 "Push Rules"): the rule set, the server-default
// rules and the evaluator.
//
// Why not mautrix's pushrules evaluator: mautrix v0.31.0 has no default
// rules, and its matching departs from the spec: event_match compiles the
// glob with an implicit "contains" (so "foo" matches "xfoox") and
// stringifies non-string values (MSC3862, so "*" matches a number);
// dotted keys fall back to joining unescaped parts; it looks up only
// type/sender/room_id/state_key/content; contains_display_name is case
// sensitive with byte-wise boundaries. The rules below are the spec's, and
// the matcher follows the spec's conditions exactly.

// Push rule kinds, in the order they are evaluated.
var pushRuleKinds = []string{"override", "content", "room", "sender", "underride"}

// pushCondition is one condition of an override or underride rule. Value
// is kept raw so that null and absent stay apart.
type pushCondition struct {
	Kind    string          `json:"kind"`
	Key     string          `json:"key,omitempty"`
	Pattern *string         `json:"pattern,omitempty"`
	Value   json.RawMessage `json:"value,omitempty"`
	Is      string          `json:"is,omitempty"`
}

// pushRule is one rule as the API and m.push_rules show it.
type pushRule struct {
	RuleID     string            `json:"rule_id"`
	Default    bool              `json:"default"`
	Enabled    bool              `json:"enabled"`
	Actions    []json.RawMessage `json:"actions"`
	Conditions *[]pushCondition  `json:"conditions,omitempty"`
	Pattern    *string           `json:"pattern,omitempty"`
}

// pushRuleset is the "global" scope.
type pushRuleset struct {
	Override  []pushRule `json:"override"`
	Content   []pushRule `json:"content"`
	Room      []pushRule `json:"room"`
	Sender    []pushRule `json:"sender"`
	Underride []pushRule `json:"underride"`
}

// pushRulesContent is the content of m.push_rules.
type pushRulesContent struct {
	Global pushRuleset `json:"global"`
}

func (rs *pushRuleset) kind(kind string) *[]pushRule {
	switch kind {
	case "override":
		return &rs.Override
	case "content":
		return &rs.Content
	case "room":
		return &rs.Room
	case "sender":
		return &rs.Sender
	case "underride":
		return &rs.Underride
	}
	return nil
}

func strp(s string) *string { return &s }

func conds(c ...pushCondition) *[]pushCondition {
	if c == nil {
		c = []pushCondition{}
	}
	return &c
}

func actions(a ...string) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(a))
	for _, x := range a {
		out = append(out, json.RawMessage(x))
	}
	return out
}

func eventMatch(key, pattern string) pushCondition {
	return pushCondition{Kind: "event_match", Key: key, Pattern: strp(pattern)}
}

const (
	actNotify       = `"notify"`
	actSoundDefault = `{"set_tweak":"sound","value":"default"}`
	actSoundRing    = `{"set_tweak":"sound","value":"ring"}`
	actHighlight    = `{"set_tweak":"highlight"}`
)

// defaultRules returns the spec's server-default rules for userID, in
// order. .m.rule.master is the first override; user rules of a kind go
// before the other defaults of that kind (see mergeRules).
func defaultRules(userID string) pushRuleset {
	uid, _ := json.Marshal(userID)
	def := func(id string, enabled bool, c *[]pushCondition, a ...string) pushRule {
		return pushRule{RuleID: id, Default: true, Enabled: enabled, Conditions: c, Actions: actions(a...)}
	}
	return pushRuleset{
		Override: []pushRule{
			def(".m.rule.master", false, conds()),
			def(".m.rule.suppress_notices", true, conds(eventMatch("content.msgtype", "m.notice"))),
			def(".m.rule.invite_for_me", true, conds(eventMatch("type", "m.room.member"),
				eventMatch("content.membership", "invite"), eventMatch("state_key", userID)), actNotify, actSoundDefault),
			def(".m.rule.member_event", true, conds(eventMatch("type", "m.room.member"))),
			def(".m.rule.is_user_mention", true, conds(pushCondition{Kind: "event_property_contains",
				Key: `content.m\.mentions.user_ids`, Value: uid}), actNotify, actSoundDefault, actHighlight),
			def(".m.rule.is_room_mention", true, conds(
				pushCondition{Kind: "event_property_is", Key: `content.m\.mentions.room`, Value: json.RawMessage(`true`)},
				pushCondition{Kind: "sender_notification_permission", Key: "room"}), actNotify, actHighlight),
			def(".m.rule.tombstone", true, conds(eventMatch("type", "m.room.tombstone"), eventMatch("state_key", "")),
				actNotify, actHighlight),
			def(".m.rule.reaction", true, conds(eventMatch("type", "m.reaction"))),
			def(".m.rule.room.server_acl", true, conds(eventMatch("type", "m.room.server_acl"), eventMatch("state_key", ""))),
			def(".m.rule.suppress_edits", true, conds(pushCondition{Kind: "event_property_is",
				Key: `content.m\.relates_to.rel_type`, Value: json.RawMessage(`"m.replace"`)})),
		},
		Content: []pushRule{},
		Room:    []pushRule{},
		Sender:  []pushRule{},
		Underride: []pushRule{
			def(".m.rule.call", true, conds(eventMatch("type", "m.call.invite")), actNotify, actSoundRing),
			def(".m.rule.encrypted_room_one_to_one", true, conds(pushCondition{Kind: "room_member_count", Is: "2"},
				eventMatch("type", "m.room.encrypted")), actNotify, actSoundDefault),
			def(".m.rule.room_one_to_one", true, conds(pushCondition{Kind: "room_member_count", Is: "2"},
				eventMatch("type", "m.room.message")), actNotify, actSoundDefault),
			def(".m.rule.message", true, conds(eventMatch("type", "m.room.message")), actNotify),
			def(".m.rule.encrypted", true, conds(eventMatch("type", "m.room.encrypted")), actNotify),
		},
	}
}

// mergeRules builds the user's effective rule set from the stored
// m.push_rules (nil when none): the stored user rules in their order, and
// the current server-default rules with the stored enabled flag and
// actions of each. Defaults the server no longer has are dropped and new
// ones appear, so a stored set never pins old defaults.
func mergeRules(userID string, stored []byte) pushRuleset {
	out := defaultRules(userID)
	var st pushRulesContent
	if len(stored) > 0 {
		_ = json.Unmarshal(stored, &st)
	}
	for _, kind := range pushRuleKinds {
		defs := *out.kind(kind)
		saved := map[string]pushRule{}
		var user []pushRule
		for _, r := range *st.Global.kind(kind) {
			if strings.HasPrefix(r.RuleID, ".") {
				saved[r.RuleID] = r
			} else if r.RuleID != "" {
				r.Default = false
				user = append(user, r)
			}
		}
		for i, d := range defs {
			if s, ok := saved[d.RuleID]; ok {
				defs[i].Enabled = s.Enabled
				if s.Actions != nil {
					defs[i].Actions = s.Actions
				}
			}
		}
		merged := make([]pushRule, 0, len(defs)+len(user))
		if kind == "override" && len(defs) > 0 && defs[0].RuleID == ".m.rule.master" {
			// The master rule outranks even user rules.
			merged = append(merged, defs[0])
			defs = defs[1:]
		}
		merged = append(merged, user...)
		merged = append(merged, defs...)
		*out.kind(kind) = merged
	}
	return out
}

// pushEvent is an event as push rules see it: the client-format event with
// room_id, decoded with numbers kept exact.
type pushEvent struct {
	fields map[string]any
	roomID string
	sender string
	body   string
}

func newPushEvent(clientJSON []byte, roomID string) (*pushEvent, error) {
	dec := json.NewDecoder(bytes.NewReader(clientJSON))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	m["room_id"] = roomID
	ev := &pushEvent{fields: m, roomID: roomID}
	ev.sender, _ = m["sender"].(string)
	if c, ok := m["content"].(map[string]any); ok {
		ev.body, _ = c["body"].(string)
	}
	return ev, nil
}

// splitPath splits a dot-separated property path: "\." is a literal dot,
// "\\" a literal backslash, any other escape is left as is.
func splitPath(key string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			cur.WriteByte(key[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}

// lookupPathOK returns the property at a path (splitPath).
func (e *pushEvent) lookupPathOK(path []string) (any, bool) {
	var cur any = e.fields
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// lookupPath is lookupPathOK for callers that need no null/absent
// distinction: nil when absent.
func (e *pushEvent) lookupPath(path []string) any {
	v, _ := e.lookupPathOK(path)
	return v
}

// pushRoom is what room-dependent conditions need.
type pushRoom struct {
	memberCount int
	// displayName returns the user's display name in the room (read
	// only when a rule needs it).
	displayName func() string
	// senderLevel is the sender's power level.
	senderLevel int64
	// notifyLevels holds the power levels' "notifications" by key.
	notifyLevels map[string]int64
}

// globCache holds compiled patterns (they repeat across users).
var globCache sync.Map

// globRegexp compiles a Matrix glob: case-insensitive, anchored to the
// whole value, or for content.body to a substring between word boundaries.
func globRegexp(pattern string, words bool) *regexp.Regexp {
	key := strconv.FormatBool(words) + ":" + pattern
	if re, ok := globCache.Load(key); ok {
		return re.(*regexp.Regexp)
	}
	var b strings.Builder
	for _, r := range pattern {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	expr := `(?is)^` + b.String() + `$`
	if words {
		// \W is exactly "not [A-Za-z0-9_]" in RE2.
		expr = `(?is)(?:^|\W)` + b.String() + `(?:\W|$)`
	}
	re := regexp.MustCompile(expr)
	globCache.Store(key, re)
	return re
}

// scalarEqual compares an event value with a condition value exactly:
// strings, integers, booleans and null only, no casting.
func scalarEqual(v any, want any) bool {
	switch x := v.(type) {
	case string, bool, nil:
		return x == want
	case json.Number:
		w, ok := want.(json.Number)
		if !ok {
			return false
		}
		a, err1 := strconv.ParseInt(x.String(), 10, 64)
		b, err2 := strconv.ParseInt(w.String(), 10, 64)
		return err1 == nil && err2 == nil && a == b
	}
	return false
}

func decodeValue(raw json.RawMessage) (any, bool) {
	if len(raw) == 0 {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return nil, false
	}
	switch v.(type) {
	case string, bool, nil, json.Number:
		return v, true
	}
	return nil, false
}

// matches reports whether one condition holds. Unknown kinds never match.
func (c pushCondition) matches(ev *pushEvent, room *pushRoom) bool {
	return compileCond(c).match(ev, room)
}

// literalWords matches s case-insensitively as a substring between word
// boundaries (contains_display_name; display names are not globs).
func literalWords(s string) *regexp.Regexp {
	key := "lit" + s
	if re, ok := globCache.Load(key); ok {
		return re.(*regexp.Regexp)
	}
	re := regexp.MustCompile(`(?is)(?:^|\W)` + regexp.QuoteMeta(s) + `(?:\W|$)`)
	globCache.Store(key, re)
	return re
}

var memberCountRe = regexp.MustCompile(`^(==|<|>|<=|>=)?([0-9]+)$`)

func memberCountMatches(is string, count int) bool {
	m := memberCountRe.FindStringSubmatch(is)
	if m == nil {
		return false
	}
	n, err := strconv.Atoi(m[2])
	if err != nil {
		return false
	}
	switch m[1] {
	case "", "==":
		return count == n
	case "<":
		return count < n
	case ">":
		return count > n
	case "<=":
		return count <= n
	case ">=":
		return count >= n
	}
	return false
}

// evaluate returns the actions of the first enabled rule that matches, or
// nil when none does (no notification).
func (rs *pushRuleset) evaluate(ev *pushEvent, room *pushRoom) []json.RawMessage {
	if r := compileRules(rs).evaluate(ev, room, nil); r != nil {
		return r.actions
	}
	return nil
}

// Tweaks reads the actions: whether they notify, whether they
// highlight, and the tweaks for the push gateway.
func Tweaks(acts []json.RawMessage) (notify, highlight bool, tweaks map[string]any) {
	tweaks = map[string]any{}
	for _, a := range acts {
		var s string
		if json.Unmarshal(a, &s) == nil {
			notify = notify || s == "notify"
			continue
		}
		var t struct {
			SetTweak string          `json:"set_tweak"`
			Value    json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &t) != nil || t.SetTweak == "" {
			continue
		}
		var v any = true
		if len(t.Value) > 0 {
			_ = json.Unmarshal(t.Value, &v)
		}
		tweaks[t.SetTweak] = v
	}
	if h, ok := tweaks["highlight"].(bool); ok {
		highlight = h
	}
	return notify, highlight, tweaks
}
