// Package memberview holds what the room-server's federation queries read
// from a room's state (services/roomserver/fedquery.go): each member's
// membership, counted per server, and the history visibility, for one
// state snapshot. A view is derived from another snapshot's view plus the
// state delta between the two (the entries the snapshot rows store), so a
// join into a room of 10,000 members loads one event, not 10,000 (#20).
// Derived views share their unchanged entries with the view they came
// from; every maxDepth derivations the entries are copied into one map.
package memberview

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/lru"
)

// Source is what views are built from: the room-server's snapshots and
// events. A state is a map from state key NID to event NID.
type Source interface {
	// Delta returns a snapshot's parent and the entries that turn the
	// parent's state into the snapshot's (event NID 0 removes the key).
	// Parent 0 is the empty state: the entries are then the whole state.
	Delta(ctx context.Context, nid int64) (parent int64, keys, events []int64, err error)
	// State returns a snapshot's whole state.
	State(ctx context.Context, nid int64) (map[int64]int64, error)
	// Events loads state events by NID.
	Events(ctx context.Context, nids []int64) (map[int64]gomatrixserverlib.PDU, error)
}

// Views is a bounded cache of views by snapshot NID (snapshots never
// change, so neither do their views).
type Views struct {
	src   Source
	cache *lru.Cache[int64, *View]
}

// maxWalk bounds how many snapshots Get walks up from the one asked for to
// find one whose view is cached; past it the view is built from the whole
// state.
const maxWalk = 32

// New makes a cache of at most size views holding at most maxMembers
// members together (a view counts all its members, also those it shares).
func New(src Source, size, maxMembers int) *Views {
	return &Views{src: src, cache: lru.NewWeighted[int64, *View](size, maxMembers, func(v *View) int { return v.members + 1 })}
}

// Get returns the view of snapshot nid: cached; or derived from the
// nearest ancestor snapshot (up to maxWalk parents up) whose view is
// cached, with the deltas in between; or built from the whole state.
// Every snapshot is stored as its parent plus a delta, whatever made it
// (one event's change, state resolution across a fork, a state reset), so
// a derived view is the same as a built one.
func (vs *Views) Get(ctx context.Context, nid int64) (*View, error) {
	if nid == 0 {
		return empty, nil
	}
	if v, ok := vs.cache.Get(nid); ok {
		return v, nil
	}
	type step struct{ keys, events []int64 }
	var steps []step
	var base *View
	for cur := nid; base == nil && len(steps) < maxWalk; {
		parent, keys, events, err := vs.src.Delta(ctx, cur)
		if err != nil {
			return nil, err
		}
		steps = append(steps, step{keys, events})
		if parent == 0 {
			base = empty
		} else if v, ok := vs.cache.Get(parent); ok {
			base = v
		}
		cur = parent
	}
	var delta map[int64]int64
	if base == nil {
		st, err := vs.src.State(ctx, nid)
		if err != nil {
			return nil, err
		}
		base, delta = empty, st
	} else {
		delta = make(map[int64]int64)
		for i := len(steps) - 1; i >= 0; i-- {
			for j, k := range steps[i].keys {
				delta[k] = steps[i].events[j]
			}
		}
	}
	v, err := vs.derive(ctx, base, delta)
	if err != nil {
		return nil, err
	}
	vs.cache.Put(nid, v)
	return v, nil
}

// Build makes the view of a whole state, without the cache (the reference
// the tests compare derived views with).
func (vs *Views) Build(ctx context.Context, nid int64) (*View, error) {
	st, err := vs.src.State(ctx, nid)
	if err != nil {
		return nil, err
	}
	return vs.derive(ctx, empty, st)
}

// derive applies delta (state key NID → event NID, 0 removes) to base.
func (vs *Views) derive(ctx context.Context, base *View, delta map[int64]int64) (*View, error) {
	nids := make([]int64, 0, len(delta))
	for _, ev := range delta {
		if ev != 0 {
			nids = append(nids, ev)
		}
	}
	events, err := vs.src.Events(ctx, nids)
	if err != nil {
		return nil, err
	}
	v := base.child(len(delta))
	for k, ev := range delta {
		if ev == 0 {
			v.set(k, member{})
			if k == v.visKey {
				v.visKey, v.visibility = 0, "shared"
			}
			continue
		}
		pdu, ok := events[ev]
		if !ok {
			return nil, fmt.Errorf("memberview: state event %d not found", ev)
		}
		switch {
		case pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil:
			m, _ := pdu.Membership()
			v.set(k, newMember(*pdu.StateKey(), m))
		case pdu.Type() == spec.MRoomHistoryVisibility && pdu.StateKeyEquals(""):
			v.visKey, v.visibility = k, historyVisibility(pdu)
		}
	}
	v.finish()
	return v, nil
}

// historyVisibility reads an m.room.history_visibility event; a value not
// understood is "shared", as the spec says.
func historyVisibility(ev gomatrixserverlib.PDU) string {
	var c struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	switch c.HistoryVisibility {
	case "world_readable", "shared", "invited", "joined":
		return c.HistoryVisibility
	}
	return "shared"
}

// member is one m.room.member state entry. A zero member (no membership)
// is no entry: in a derived view's own entries it removes the key.
type member struct {
	user       string
	server     string // "" when the user ID is not valid: counted nowhere
	membership string
}

func newMember(user, membership string) member {
	m := member{user: user, membership: membership}
	if membership == "" {
		return member{}
	}
	if u, err := spec.NewUserID(user, true); err == nil {
		m.server = string(u.Domain())
	}
	return m
}

// tally counts the users of one server per membership.
type tally map[string]int

// maxDepth is how many derived views may share entries before one copies
// them all into its own map (reading an entry walks at most this many
// maps; the copy costs the room's members once per maxDepth changes).
const maxDepth = 32

// View is the members and history visibility of one snapshot. It is
// immutable once made (views are shared through the cache).
type View struct {
	parent     *View
	own        map[int64]member // by state key NID; a zero member removes the key
	depth      int
	members    int
	visKey     int64 // the m.room.history_visibility entry's state key NID, 0 for none
	visibility string
	servers    map[string]tally // servers with at least one user with a membership
	joined     []string         // servers with a joined user, sorted

	// While the view is being made: the tallies (and the map) it already
	// copied from its parent's.
	copied        map[string]bool
	serversCopied bool
	joinedChanged bool
}

var empty = &View{visibility: "shared", servers: map[string]tally{}}

// child starts a view derived from v.
func (v *View) child(changes int) *View {
	return &View{parent: v, own: make(map[int64]member, changes), depth: v.depth + 1, members: v.members,
		visKey: v.visKey, visibility: v.visibility, servers: v.servers, joined: v.joined, copied: map[string]bool{}}
}

// lookup is the entry of a state key ("" membership: none).
func (v *View) lookup(k int64) member {
	for ; v != nil; v = v.parent {
		if m, ok := v.own[k]; ok {
			return m
		}
	}
	return member{}
}

// set replaces the entry of a state key, keeping the counts.
func (v *View) set(k int64, m member) {
	old := v.lookup(k)
	if old == m {
		return
	}
	if old.membership != "" {
		v.members--
		v.count(old, -1)
	}
	if m.membership != "" {
		v.members++
		v.count(m, +1)
	}
	v.own[k] = m
}

func (v *View) count(m member, d int) {
	if m.server == "" {
		return
	}
	if !v.serversCopied {
		v.servers = maps(v.servers)
		v.serversCopied = true
	}
	t := v.servers[m.server]
	if !v.copied[m.server] {
		nt := make(tally, len(t)+1)
		for k, n := range t {
			nt[k] = n
		}
		t = nt
		v.servers[m.server] = t
		v.copied[m.server] = true
	}
	before := t[spec.Join]
	if t[m.membership] += d; t[m.membership] == 0 {
		delete(t, m.membership)
	}
	if len(t) == 0 {
		delete(v.servers, m.server)
		delete(v.copied, m.server)
	}
	if (before == 0) != (t[spec.Join] == 0) {
		v.joinedChanged = true
	}
}

func maps(m map[string]tally) map[string]tally {
	out := make(map[string]tally, len(m)+1)
	for k, t := range m {
		out[k] = t
	}
	return out
}

// finish completes a derived view: the joined servers when they changed,
// and one map of entries when the chain of shared ones got too long.
func (v *View) finish() {
	if v.joinedChanged {
		v.joined = make([]string, 0, len(v.servers))
		for srv, t := range v.servers {
			if t[spec.Join] > 0 {
				v.joined = append(v.joined, srv)
			}
		}
		slices.Sort(v.joined)
	}
	v.copied, v.serversCopied, v.joinedChanged = nil, false, false
	if len(v.own) == 0 && v.parent != nil {
		// Nothing changed here: share the parent's entries directly.
		v.own, v.depth, v.parent = v.parent.own, v.parent.depth, v.parent.parent
	}
	if v.depth > maxDepth {
		v.flatten()
	}
}

// flatten copies the entries into one map.
func (v *View) flatten() {
	var chain []*View
	for c := v; c != nil; c = c.parent {
		chain = append(chain, c)
	}
	own := make(map[int64]member, v.members)
	for i := len(chain) - 1; i >= 0; i-- {
		for k, m := range chain[i].own {
			if m.membership == "" {
				delete(own, k)
			} else {
				own[k] = m
			}
		}
	}
	v.parent, v.own, v.depth = nil, own, 0
}

// Servers are the servers with a joined member, sorted. The slice is
// shared: do not change it.
func (v *View) Servers() []string { return v.joined }

// ServerMembership is the best membership any user of server has: join,
// then invite, then the first of the others in sorted order ("" for
// none).
func (v *View) ServerMembership(server spec.ServerName) string {
	t := v.servers[string(server)]
	switch {
	case t[spec.Join] > 0:
		return spec.Join
	case t[spec.Invite] > 0:
		return spec.Invite
	}
	best := ""
	for m := range t {
		if best == "" || m < best {
			best = m
		}
	}
	return best
}

// Visibility is the history visibility ("shared" when none is set).
func (v *View) Visibility() string { return v.visibility }

// Len is the number of members (users with a membership).
func (v *View) Len() int { return v.members }

// Memberships returns every member's membership by user ID (a copy).
func (v *View) Memberships() map[string]string {
	out := make(map[string]string, v.members)
	seen := map[int64]bool{}
	for c := v; c != nil; c = c.parent {
		for k, m := range c.own {
			if seen[k] {
				continue
			}
			seen[k] = true
			if m.membership != "" {
				out[m.user] = m.membership
			}
		}
	}
	return out
}
