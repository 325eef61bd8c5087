package push

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Push rule evaluation point: the room event consumer (internal/consumers) stores
// each batch with store.ApplyWith, which calls evaluatePush for every newly
// stored event inside the same transaction. So notifications commit with
// their event (the spec wants the count in the same /sync as the event),
// and a redelivered event, already stored, is not evaluated again.
//
// Recipients are the room's joined local users except the sender, plus the
// local target of an invite. Evaluating the event for each of them made a
// message's cost grow with the room (#20), so it is evaluated once for a
// member with the server-default rules whom the event does not name: its
// default outcome (store.RoomNotification), which every joined local member
// receives unless told otherwise. Only the members that may differ are
// evaluated one by one (store.PushContext.Members: those with stored rules
// or a pusher, and the mentioned), plus the invite's target; each whose
// outcome differs gets a row of their own (store.Notification, Suppress
// when the default notifies and they would not). Under the default rules
// the only conditions that depend on the member are is_user_mention and
// invite_for_me, which name them. The inputs (members, power levels, push
// rules, thread) come from the client-API's own tables as of the event.

// ThreadMain is the thread ID of the main timeline.
const ThreadMain = "main"

// defaultMember is the user ID the default outcome is evaluated for: no
// event names it (it is not a valid user ID).
const defaultMember = "@\x00default"

// Evaluate evaluates a newly stored event; pc (the room's member count,
// the members that may differ from the default, their rules' positions
// and power levels) was read with the event's storage.
func (s *Service) Evaluate(ctx context.Context, rd store.Reader, a store.Applied, pc store.PushContext) (store.PushOutcome, error) {
	var out store.PushOutcome
	ev := a.Event
	thread := pc.Thread
	if thread == "" {
		thread = ThreadMain
	}
	if s.IsLocal(ev.Sender) {
		out.OwnRead = &store.OwnRead{UserID: ev.Sender, RoomID: ev.RoomID, ThreadID: thread}
	}
	invited := ""
	if ev.Type == spec.MRoomMember && ev.Membership == store.MembershipInvite && ev.StateKey != nil &&
		*ev.StateKey != ev.Sender && s.IsLocal(*ev.StateKey) {
		invited = *ev.StateKey
	}
	recipients := make([]string, 0, len(pc.Members)+1)
	for _, u := range pc.Members {
		if u != ev.Sender && s.IsLocal(u) {
			recipients = append(recipients, u)
		}
	}
	if invited != "" && !slices.Contains(recipients, invited) {
		recipients = append(recipients, invited)
	}
	pe, err := newPushEvent(ev.JSON, ev.RoomID)
	if err != nil {
		// Our own client-format JSON; never expected. Failing would stall
		// the consumer on this batch forever, so no notification instead.
		s.log.Error("push rules: undecodable event", zap.String("event_id", ev.EventID), zap.Error(err))
		return out, nil
	}
	var ts int64
	if n, ok := pe.fields["origin_server_ts"].(json.Number); ok {
		ts, _ = n.Int64()
	}
	room := pushRoom{memberCount: pc.MemberCount}
	room.senderLevel, room.notifyLevels = s.powers.get(ev.RoomID, pc.Create, pc.PowerLevels, ev.Sender)
	// Conditions that do not depend on the recipient are decided once for
	// the event (compiledRules).
	memo := condMemo{}
	def := s.pushRules.defaults().evaluate(pe, &room, memo)
	if def != nil && !def.notify {
		def = nil
	}
	if def != nil {
		out.Room = &store.RoomNotification{RoomID: ev.RoomID, EventID: ev.EventID, ThreadID: thread, Sender: ev.Sender,
			Pos: a.Pos, Actions: def.actionsJSON, Highlight: def.highlight, TS: ts}
	}
	if len(recipients) == 0 {
		return out, nil
	}
	rules, err := s.rulesOf(ctx, rd, recipients, pc.RulesPos)
	if err != nil {
		return out, err
	}
	for i, user := range recipients {
		room.displayName = func() string { return displayNameIn(ctx, rd, ev.RoomID, user) }
		r := rules[i].evaluate(pe, &room, memo)
		if r != nil && !r.notify {
			r = nil
		}
		// The invite's target is not a member: the default outcome is not
		// theirs.
		base := def
		if user == invited {
			base = nil
		}
		if sameOutcome(r, base) {
			continue
		}
		n := store.Notification{UserID: user, RoomID: ev.RoomID, EventID: ev.EventID, ThreadID: thread, Pos: a.Pos, TS: ts}
		if r == nil {
			n.Suppress, n.Actions = true, []byte(`[]`)
		} else {
			n.Actions, n.Highlight = r.actionsJSON, r.highlight
		}
		out.Notifications = append(out.Notifications, n)
	}
	return out, nil
}

// sameOutcome reports whether two outcomes (nil: no notification) notify
// alike: both not, or both with the same actions.
func sameOutcome(a, b *compiledRule) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.highlight == b.highlight && bytes.Equal(a.actionsJSON, b.actionsJSON)
}

// Woken are the users whose pushers have something new after an event's
// outcome: the members with a pusher when the default outcome notifies
// (the sender aside), and the members with a notification of their own.
func Woken(out store.PushOutcome, pc store.PushContext) []string {
	var users []string
	if out.Room != nil {
		for u := range pc.Pushers {
			if u != out.Room.Sender {
				users = append(users, u)
			}
		}
	}
	for _, n := range out.Notifications {
		if !n.Suppress {
			users = append(users, n.UserID)
		}
	}
	return users
}

// rulesOf returns each user's compiled rules, given the positions of their
// stored m.push_rules (none: the defaults). Only the stored rules the
// cache does not have are read.
func (s *Service) rulesOf(ctx context.Context, rd store.Reader, users []string, pos map[string]int64) ([]compiledRules, error) {
	out := make([]compiledRules, len(users))
	var missing []string
	for i, u := range users {
		rs, ok := s.pushRules.get(u, pos[u])
		if !ok && pos[u] != 0 {
			missing = append(missing, u)
			continue
		}
		if !ok {
			rs = s.pushRules.put(u, 0, nil)
		}
		out[i] = rs
	}
	if len(missing) == 0 {
		return out, nil
	}
	stored, err := rd.GlobalAccountData(ctx, missing, RulesType)
	if err != nil {
		return nil, err
	}
	for i, u := range users {
		if out[i] == nil {
			// Cached with the position read with it: should the rules
			// have changed since pos was read, the newer copy is as good.
			out[i] = s.pushRules.put(u, stored[u].Pos, stored[u].Content)
		}
	}
	return out, nil
}

// isLocal reports whether a user ID belongs to this server.
func (s *Service) IsLocal(userID string) bool {
	return strings.HasSuffix(userID, ":"+s.serverName)
}

// displayNameIn reads the user's display name in the room, only when a
// rule asks (contains_display_name is in no default rule of v1.19).
func displayNameIn(ctx context.Context, rd store.Reader, roomID, userID string) string {
	st, err := rd.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
	if err != nil {
		return ""
	}
	var ev struct {
		Content struct {
			DisplayName string `json:"displayname"`
		} `json:"content"`
	}
	if json.Unmarshal(st.JSON, &ev) != nil {
		return ""
	}
	return ev.Content.DisplayName
}

// powerFor returns the sender's power level and the "notifications" levels
// from the client-format create and power levels events (either may be
// nil): without power levels, creators have 100; in room versions with
// privileged creators, creators outrank everyone.
func powerFor(createJSON, powerJSON []byte, sender string) (int64, map[string]int64) {
	return parsePowers(createJSON, powerJSON).of(sender)
}

// roomPowers is what powerFor reads from a room's create and power levels
// events, decoded once for every sender.
type roomPowers struct {
	creators   []string
	privileged bool // the room version's creators outrank everyone
	noPower    bool // no power levels event
	hasPower   bool // a power levels event, decodable
	content    gomatrixserverlib.PowerLevelContent
	// notify is content.notifications (notificationLevels); none is the
	// empty map answered without (decodable) power levels.
	notify, none map[string]int64
}

func parsePowers(createJSON, powerJSON []byte) *roomPowers {
	var create struct {
		Sender  string `json:"sender"`
		Content struct {
			Creator            string   `json:"creator"`
			RoomVersion        string   `json:"room_version"`
			AdditionalCreators []string `json:"additional_creators"`
		} `json:"content"`
	}
	_ = json.Unmarshal(createJSON, &create)
	p := &roomPowers{creators: []string{create.Sender}, notify: notificationLevels(powerJSON), none: map[string]int64{}}
	if create.Content.Creator != "" {
		p.creators = append(p.creators, create.Content.Creator)
	}
	version := create.Content.RoomVersion
	if version == "" {
		version = "1"
	}
	if impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version)); err == nil && impl.PrivilegedCreators() {
		p.privileged = true
		p.creators = append(p.creators, create.Content.AdditionalCreators...)
	}
	if powerJSON == nil {
		p.noPower = true
		return p
	}
	var ev struct {
		Content gomatrixserverlib.PowerLevelContent `json:"content"`
	}
	ev.Content.Defaults()
	if json.Unmarshal(powerJSON, &ev) == nil {
		p.hasPower, p.content = true, ev.Content
	}
	return p
}

// of is sender's power level and the notifications levels (shared: not
// to be changed).
func (p *roomPowers) of(sender string) (int64, map[string]int64) {
	creator := slices.Contains(p.creators, sender)
	switch {
	case p.privileged && creator:
		return math.MaxInt64, p.notify
	case p.noPower && creator:
		return 100, p.none
	case !p.hasPower:
		return 0, p.none
	}
	return p.content.UserLevel(spec.SenderID(sender)), p.notify
}

// powerCache keeps each room's decoded create and power levels events
// (roomPowers) with the bytes they came from, so each event of a busy
// room does not decode them again (they are read with every batch, so the
// bytes are compared, not their identity). One entry per room, whatever
// the number of senders: the bytes are kept once. Used by the single
// consumer goroutine only; the levels map returned is shared and must not
// be changed.
type powerCache struct {
	m map[string]powerEntry
}

type powerEntry struct {
	create, power []byte
	powers        *roomPowers
}

// powerCacheMax bounds the cache in rooms (each about the size of its two
// events, decoded and not); past it the cache starts over.
const powerCacheMax = 4096

func (c *powerCache) get(roomID string, createJSON, powerJSON []byte, sender string) (int64, map[string]int64) {
	if e, ok := c.m[roomID]; ok && bytes.Equal(e.create, createJSON) && bytes.Equal(e.power, powerJSON) &&
		(e.create == nil) == (createJSON == nil) && (e.power == nil) == (powerJSON == nil) {
		return e.powers.of(sender)
	}
	p := parsePowers(createJSON, powerJSON)
	if c.m == nil || len(c.m) >= powerCacheMax {
		c.m = map[string]powerEntry{}
	}
	c.m[roomID] = powerEntry{create: bytes.Clone(createJSON), power: bytes.Clone(powerJSON), powers: p}
	return p.of(sender)
}

// notificationLevels reads content.notifications of a power levels event.
func notificationLevels(powerJSON []byte) map[string]int64 {
	var ev struct {
		Content struct {
			Notifications map[string]json.Number `json:"notifications"`
		} `json:"content"`
	}
	out := map[string]int64{}
	if powerJSON == nil || json.Unmarshal(powerJSON, &ev) != nil {
		return out
	}
	for k, v := range ev.Content.Notifications {
		if n, err := v.Int64(); err == nil {
			out[k] = n
		}
	}
	return out
}

// ruleCache keeps each user's compiled rule set (compiledRules) with the
// account data position of the stored m.push_rules it was built from (0:
// none), so evaluating an event for a room's members neither rebuilds nor
// re-reads every member's rules (mergeRules was 7 % of the server's CPU
// under load). Every write of account data takes a new position, so an
// entry is used only while the stored rules are the same, and a change is
// seen at once.
type ruleCache struct {
	mu sync.Mutex
	m  map[string]cachedRules
	// def is the default outcome's rules (defaults).
	defOnce sync.Once
	def     compiledRules
}

type cachedRules struct {
	pos   int64
	rules compiledRules
}

// ruleCacheMax bounds the cache; past it the cache starts over.
const ruleCacheMax = 100_000

// defaults returns the server-default rules of defaultMember, compiled
// once.
func (c *ruleCache) defaults() compiledRules {
	c.defOnce.Do(func() {
		merged := mergeRules(defaultMember, nil)
		c.def = compileRules(&merged)
	})
	return c.def
}

// get returns the user's rules built from the stored rules at pos, if
// cached. A user with no rules at all has an empty, non-nil rule set.
func (c *ruleCache) get(userID string, pos int64) (compiledRules, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[userID]; ok && e.pos == pos {
		return e.rules, true
	}
	return nil, false
}

// put builds, caches and returns the user's rules from the stored
// m.push_rules at pos (nil and 0 when none).
func (c *ruleCache) put(userID string, pos int64, stored []byte) compiledRules {
	merged := mergeRules(userID, stored)
	rs := compileRules(&merged)
	if rs == nil {
		rs = compiledRules{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= ruleCacheMax {
		c.m = map[string]cachedRules{}
	}
	c.m[userID] = cachedRules{pos: pos, rules: rs}
	return rs
}
