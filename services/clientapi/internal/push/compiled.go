package push

import (
	"encoding/json"
	"regexp"
	"slices"
	"sync"
)

// Compiled push rules. Evaluating an event for a room's members repeats
// the same work for each member: most members have the default rules, and
// most conditions (event_match on fixed keys and patterns,
// room_member_count, sender_notification_permission) do not depend on the
// member. So a rule set is compiled once (ruleCache): disabled rules are
// dropped, each rule's actions are read and marshalled once, and each
// condition has its path split, pattern compiled and value decoded. Equal
// conditions of different users are interned to one *compiledCond, so
// that evaluating one event for many members decides each distinct
// condition once (condMemo). The only condition that depends on the member
// is contains_display_name, which is never memoised; conditions that name
// the member (the default rules' state_key and m.mentions.user_ids ones)
// are distinct conditions per member and so are decided per member.

type condKind uint8

const (
	condNever condKind = iota // unknown kinds and malformed conditions
	condEventMatch
	condPropertyIs
	condPropertyContains
	condDisplayName
	condMemberCount
	condSenderPermission
	condContentPattern // a content rule: its pattern on a non-empty body
	condRoomIs         // a room rule: the event's room ID is the rule ID
	condSenderIs       // a sender rule: the event's sender is the rule ID
)

// compiledCond is one condition, ready to match.
type compiledCond struct {
	kind  condKind
	path  []string       // event_match, event_property_*
	re    *regexp.Regexp // event_match, content rules
	value any            // event_property_*: the decoded scalar
	str   string         // room_member_count's "is"; the permission key; the room or sender ID
}

// match reports whether the condition holds for the event.
func (c *compiledCond) match(ev *pushEvent, room *pushRoom) bool {
	switch c.kind {
	case condEventMatch:
		s, ok := ev.lookupPath(c.path).(string)
		return ok && c.re.MatchString(s)
	case condPropertyIs:
		// The event's side first: most events lack most properties.
		v, ok := ev.lookupPathOK(c.path)
		return ok && scalarEqual(v, c.value)
	case condPropertyContains:
		arr, ok := ev.lookupPath(c.path).([]any)
		return ok && slices.ContainsFunc(arr, func(x any) bool { return scalarEqual(x, c.value) })
	case condDisplayName:
		if room.displayName == nil || ev.body == "" {
			return false
		}
		name := room.displayName()
		return name != "" && literalWords(name).MatchString(ev.body)
	case condMemberCount:
		return memberCountMatches(c.str, room.memberCount)
	case condSenderPermission:
		need, ok := room.notifyLevels[c.str]
		if !ok {
			need = 50 // the spec's default for "room"; Synapse's for any key
		}
		return room.senderLevel >= need
	case condContentPattern:
		return ev.body != "" && c.re.MatchString(ev.body)
	case condRoomIs:
		return c.str == ev.roomID
	case condSenderIs:
		return c.str == ev.sender
	}
	return false
}

// memoised reports whether the condition's outcome is kept for the
// event's other members: not for contains_display_name, which depends on
// the member, nor for room and sender rules, which are cheaper to decide
// than to look up.
func (c *compiledCond) memoised() bool {
	switch c.kind {
	case condDisplayName, condRoomIs, condSenderIs:
		return false
	}
	return true
}

// compileCond compiles one condition of an override or underride rule.
func compileCond(c pushCondition) *compiledCond {
	never := &compiledCond{kind: condNever}
	switch c.Kind {
	case "event_match":
		if c.Pattern == nil {
			return never
		}
		return &compiledCond{kind: condEventMatch, path: splitPath(c.Key), re: globRegexp(*c.Pattern, c.Key == "content.body")}
	case "event_property_is", "event_property_contains":
		want, ok := decodeValue(c.Value)
		if !ok {
			return never
		}
		kind := condPropertyIs
		if c.Kind == "event_property_contains" {
			kind = condPropertyContains
		}
		return &compiledCond{kind: kind, path: splitPath(c.Key), value: want}
	case "contains_display_name":
		return &compiledCond{kind: condDisplayName}
	case "room_member_count":
		return &compiledCond{kind: condMemberCount, str: c.Is}
	case "sender_notification_permission":
		if c.Key == "" {
			return never
		}
		return &compiledCond{kind: condSenderPermission, str: c.Key}
	}
	return never
}

// condInterner shares one *compiledCond between equal conditions, so that
// condMemo finds a condition decided for one member when evaluating
// another. Past condInternMax entries it starts over: sharing is lost for
// rules compiled before, which stay correct.
var condInterner struct {
	mu sync.Mutex
	m  map[string]*compiledCond
}

const condInternMax = 100_000

func internCond(key string, compile func() *compiledCond) *compiledCond {
	condInterner.mu.Lock()
	defer condInterner.mu.Unlock()
	if c, ok := condInterner.m[key]; ok {
		return c
	}
	if condInterner.m == nil || len(condInterner.m) >= condInternMax {
		condInterner.m = map[string]*compiledCond{}
	}
	c := compile()
	condInterner.m[key] = c
	return c
}

// compiledRule is one enabled rule: it matches when all its conditions do.
type compiledRule struct {
	conds   []*compiledCond
	actions []json.RawMessage
	// actionsJSON is actions marshalled (what a notification stores).
	actionsJSON       []byte
	notify, highlight bool
}

// compiledRules is a user's enabled rules in evaluation order.
type compiledRules []compiledRule

// compileRules compiles an effective rule set (mergeRules).
func compileRules(rs *pushRuleset) compiledRules {
	var out compiledRules
	for _, kind := range pushRuleKinds {
		for _, r := range *rs.kind(kind) {
			if !r.Enabled {
				continue
			}
			var conds []*compiledCond
			switch kind {
			case "content":
				if r.Pattern == nil {
					continue // never matches
				}
				pattern := *r.Pattern
				conds = append(conds, internCond("content\x00"+pattern, func() *compiledCond {
					return &compiledCond{kind: condContentPattern, re: globRegexp(pattern, true)}
				}))
			case "room":
				conds = append(conds, &compiledCond{kind: condRoomIs, str: r.RuleID})
			case "sender":
				conds = append(conds, &compiledCond{kind: condSenderIs, str: r.RuleID})
			default:
				if r.Conditions != nil {
					for _, c := range *r.Conditions {
						key, err := json.Marshal(c)
						if err != nil {
							conds = append(conds, compileCond(c))
							continue
						}
						conds = append(conds, internCond("cond\x00"+string(key), func() *compiledCond { return compileCond(c) }))
					}
				}
			}
			cr := compiledRule{conds: conds, actions: effectiveActions(r.Actions)}
			var err error
			if cr.actionsJSON, err = json.Marshal(cr.actions); err != nil {
				// Actions come from decoded JSON, so this does not happen;
				// such a rule would still stop evaluation, notifying no one.
				cr.actionsJSON = []byte(`[]`)
				cr.actions = nil
			}
			cr.notify, cr.highlight, _ = Tweaks(cr.actions)
			out = append(out, cr)
		}
	}
	return out
}

// effectiveActions are a rule's actions as evaluation applies them: the
// historical "dont_notify" and "coalesce", which the spec says to ignore,
// are left out (a stored rule keeps them as the client gave them).
func effectiveActions(in []json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(in))
	for _, a := range in {
		var s string
		if json.Unmarshal(a, &s) == nil && (s == "dont_notify" || s == "coalesce") {
			continue
		}
		out = append(out, a)
	}
	return out
}

// condMemo holds the outcomes of an event's member-independent conditions
// while the event is evaluated for each member.
type condMemo map[*compiledCond]bool

// evaluate returns the first rule that matches, or nil when none does (no
// notification). memo may be nil.
func (rs compiledRules) evaluate(ev *pushEvent, room *pushRoom, memo condMemo) *compiledRule {
	for i := range rs {
		if rs[i].matches(ev, room, memo) {
			return &rs[i]
		}
	}
	return nil
}

func (r *compiledRule) matches(ev *pushEvent, room *pushRoom, memo condMemo) bool {
	for _, c := range r.conds {
		if memo == nil || !c.memoised() {
			if !c.match(ev, room) {
				return false
			}
			continue
		}
		ok, seen := memo[c]
		if !seen {
			ok = c.match(ev, room)
			memo[c] = ok
		}
		if !ok {
			return false
		}
	}
	return true
}
