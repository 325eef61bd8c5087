package roomserver

// State storage and resolution.
//
// A room state is a stateMap: state_key_nid -> event_nid, where a
// state_key_nid names a (type, state_key) tuple. States are stored as
// snapshots (store.Snapshot): a snapshot row is its parent snapshot plus a
// small delta, so a state event costs one row with one entry and a message
// costs nothing (it reuses the snapshot of its prev event). Every
// Config.SnapshotBaseInterval deltas a full "base" row is written instead,
// which bounds how many rows reading a snapshot touches. Resolved snapshots
// are kept in an LRU; snapshots are immutable, so the cache never goes stale.
//
// Snapshot NID 0 is the empty state (the state before m.room.create).

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// stateMap maps a state_key_nid to the event_nid holding that state. It is
// shared through the snapshot cache: copy before changing.
type stateMap map[int64]int64

func (m stateMap) clone() stateMap {
	out := make(stateMap, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (m stateMap) equal(o stateMap) bool {
	if len(m) != len(o) {
		return false
	}
	for k, v := range m {
		if ov, ok := o[k]; !ok || ov != v {
			return false
		}
	}
	return true
}

// diff returns the entries that turn m into next (0 removes a key), sorted
// by key.
func (m stateMap) diff(next stateMap) (keys, vals []int64) {
	for k, v := range next {
		if m[k] != v {
			keys = append(keys, k)
		}
	}
	for k := range m {
		if _, ok := next[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	vals = make([]int64, len(keys))
	for i, k := range keys {
		vals[i] = next[k]
	}
	return keys, vals
}

// snapshot is a resolved state snapshot as cached. parent, keys and vals
// are the delta it was made from (the member views derive from it); parent
// 0 is the empty state, the delta then being the whole state (not kept).
type snapshot struct {
	nid        int64
	state      stateMap
	chainLen   int
	parent     int64
	keys, vals []int64
}

// nidPtr returns a pointer to a copy of nid. Events (store.Event) point to
// their snapshots' NIDs: a pointer to a snapshot's own nid field would
// keep the snapshot's whole state map alive for as long as the event, in
// the event cache, past the state cache's bound (a 10,000-member room's
// joins held about 1 GiB so).
func nidPtr(nid int64) *int64 { return &nid }

// loadState resolves a snapshot NID into its state.
func (s *Service) loadState(ctx context.Context, q *store.Queries, nid int64) (snapshot, error) {
	if nid == 0 {
		return snapshot{state: stateMap{}}, nil
	}
	if v, ok := s.snapshots.Get(nid); ok {
		return v, nil
	}
	chain, err := q.SnapshotChain(ctx, nid)
	if err != nil {
		return snapshot{}, err
	}
	st := stateMap{}
	for _, row := range chain {
		for i, k := range row.StateKeyNIDs {
			if v := row.EventNIDs[i]; v == 0 {
				delete(st, k)
			} else {
				st[k] = v
			}
		}
	}
	last := chain[len(chain)-1]
	v := snapshot{nid: nid, state: st, chainLen: last.ChainLen, parent: last.Parent}
	if v.parent != 0 {
		v.keys, v.vals = last.StateKeyNIDs, last.EventNIDs
	}
	s.snapshots.Put(nid, v)
	return v, nil
}

// saveState stores next as a snapshot, as a delta on whichever of bases is
// closest to it (or as a new base). It reuses a base that already equals
// next. bases must not be empty; the empty state (nid 0) is a valid base.
func (s *Service) saveState(ctx context.Context, w *writeTx, roomNID int64, bases []snapshot, next stateMap) (snapshot, error) {
	best := -1
	var bestKeys, bestVals []int64
	for i, b := range bases {
		keys, vals := b.state.diff(next)
		if len(keys) == 0 {
			return b, nil
		}
		if best < 0 || len(keys) < len(bestKeys) {
			best, bestKeys, bestVals = i, keys, vals
		}
	}
	parent := bases[best]
	row := store.Snapshot{RoomNID: roomNID, Parent: parent.nid, ChainLen: parent.chainLen + 1,
		StateKeyNIDs: bestKeys, EventNIDs: bestVals}
	if parent.nid == 0 || row.ChainLen > s.cfg.SnapshotBaseInterval {
		// A new base: the full state.
		row.Parent, row.ChainLen = 0, 0
		row.StateKeyNIDs, row.EventNIDs = stateMap{}.diff(next)
	}
	nid, err := w.InsertSnapshot(ctx, row)
	if err != nil {
		return snapshot{}, err
	}
	// The delta from the parent is kept even when a base is written.
	v := snapshot{nid: nid, state: next, chainLen: row.ChainLen, parent: parent.nid}
	if parent.nid != 0 {
		v.keys, v.vals = bestKeys, bestVals
	}
	// Snapshot NIDs are never reused, so caching before commit is safe: a
	// rolled-back NID is simply never asked for.
	s.snapshots.Put(nid, v)
	return v, nil
}

// stateKeyNIDs maps tuples to their numeric IDs; tuples never used in any
// state are absent.
func (s *Service) stateKeyNIDs(ctx context.Context, q *store.Queries, keys []store.StateKey) (map[store.StateKey]int64, error) {
	out := make(map[store.StateKey]int64, len(keys))
	var miss []store.StateKey
	for _, k := range keys {
		if nid, ok := s.stateKeys.Get(k); ok {
			out[k] = nid
		} else {
			miss = append(miss, k)
		}
	}
	if len(miss) == 0 {
		return out, nil
	}
	found, err := q.StateKeyNIDs(ctx, miss)
	if err != nil {
		return nil, err
	}
	for k, nid := range found {
		out[k] = nid
		s.stateKeys.Put(k, nid)
	}
	return out, nil
}

// ensureStateKeys creates the dictionary rows for keys on the pool, outside
// any room transaction (so room writers never wait on each other for the
// shared dictionary).
func (s *Service) ensureStateKeys(ctx context.Context, keys []store.StateKey) error {
	var miss []store.StateKey
	for _, k := range keys {
		if _, ok := s.stateKeys.Get(k); !ok {
			miss = append(miss, k)
		}
	}
	if len(miss) == 0 {
		return nil
	}
	nids, err := s.store.EnsureStateKeyNIDs(ctx, miss)
	if err != nil {
		return err
	}
	for k, nid := range nids {
		s.stateKeys.Put(k, nid)
	}
	return nil
}

// stateKeyNID returns the numeric ID of one tuple, creating it inside the
// transaction if ensureStateKeys was not called for it (not cached then:
// the transaction may roll back).
func (s *Service) stateKeyNID(ctx context.Context, w *writeTx, k store.StateKey) (int64, error) {
	m, err := s.stateKeyNIDs(ctx, w.Queries, []store.StateKey{k})
	if err != nil {
		return 0, err
	}
	if nid, ok := m[k]; ok {
		return nid, nil
	}
	return w.EnsureStateKeyNID(ctx, k)
}

// authProviderFor returns the auth events for ev taken from state:
// gomatrixserverlib.StateNeededForAuth says which tuples it needs.
func (s *Service) authProviderFor(ctx context.Context, q *store.Queries, ev gomatrixserverlib.PDU, st stateMap) (*gomatrixserverlib.AuthEvents, error) {
	tuples := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples()
	pdus, err := s.stateEventsFor(ctx, q, st, tuples)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.NewAuthEvents(pdus)
}

// stateEventsFor returns the events of st at the given tuples.
func (s *Service) stateEventsFor(ctx context.Context, q *store.Queries, st stateMap, tuples []gomatrixserverlib.StateKeyTuple) ([]gomatrixserverlib.PDU, error) {
	entries, err := s.stateEntriesFor(ctx, q, st, tuples)
	if err != nil {
		return nil, err
	}
	pdus := make([]gomatrixserverlib.PDU, len(entries))
	for i, e := range entries {
		pdus[i] = e.pdu
	}
	return pdus, nil
}

// stateEntriesFor is stateEventsFor with the stored rows.
func (s *Service) stateEntriesFor(ctx context.Context, q *store.Queries, st stateMap, tuples []gomatrixserverlib.StateKeyTuple) ([]*eventEntry, error) {
	keys := make([]store.StateKey, len(tuples))
	for i, t := range tuples {
		keys[i] = store.StateKey{Type: t.EventType, StateKey: t.StateKey}
	}
	nids, err := s.stateKeyNIDs(ctx, q, keys)
	if err != nil {
		return nil, err
	}
	var evNIDs []int64
	for _, k := range keys {
		if nid, ok := nids[k]; ok {
			if ev, ok := st[nid]; ok {
				evNIDs = append(evNIDs, ev)
			}
		}
	}
	entries, err := s.loadEvents(ctx, q, evNIDs)
	if err != nil {
		return nil, err
	}
	out := make([]*eventEntry, 0, len(evNIDs))
	for _, nid := range evNIDs {
		out = append(out, entries[nid])
	}
	return out, nil
}

// checkAuth runs the room version's auth rules for ev against provider.
// gomatrixserverlib can panic on some malformed content; that is a refusal
// too, never a crash.
func checkAuth(ev gomatrixserverlib.PDU, provider gomatrixserverlib.AuthEventProvider) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("auth check failed: %v", r)
		}
	}()
	return gomatrixserverlib.Allowed(ev, provider, userIDForSender)
}

// userIDForSender maps sender IDs to user IDs; Myelin supports no pseudo-ID
// room versions, so they are the same.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return senderID.ToUserID(), nil
}

// errStateRes wraps failures inside gomatrixserverlib's state resolution.
var errStateRes = errors.New("state resolution failed")

// resolveStates merges several states with gomatrixserverlib's state
// resolution, given the full auth chain of every state event (the auth
// difference needs it):
//
//   - room versions 1 to 11: ResolveConflictsNew with the state sets
//     themselves, so a key missing from some sets is conflicted, as the
//     spec defines (v1 for version 1, v2 after);
//   - room version 12, whose rooms specify v2.1 (resolution starts from the
//     empty state; the conflicted state subgraph joins the full conflicted
//     set): the library at the pinned version cannot do it. Its
//     ResolveConflictsNew runs v2.1 with iterative auth checks that, for a
//     key the auth rules need but the partial state lacks, add the event
//     itself instead of its auth event, so from v2.1's empty start every
//     conflicted event fails (a name set on one branch of a fork is
//     dropped); asked for v2 with v12 events it panics (it orders the
//     unconflicted events by the creators' power before any create event
//     is known). So v12 states go through the deprecated ResolveConflicts,
//     v2 over the union of the sets, as before federation: a key that only
//     some sets hold counts as unconflicted there. Forks in v12 rooms may
//     therefore resolve differently from servers that run v2.1.
func (s *Service) resolveStates(ctx context.Context, q *store.Queries, version gomatrixserverlib.RoomVersion, states []stateMap) (stateMap, error) {
	if len(states) == 1 {
		return states[0], nil
	}
	allSame := true
	for _, st := range states[1:] {
		if !st.equal(states[0]) {
			allSame = false
			break
		}
	}
	if allSame {
		return states[0], nil
	}
	all := map[int64]bool{}
	for _, st := range states {
		for _, v := range st {
			all[v] = true
		}
	}
	entries, err := s.loadEvents(ctx, q, mapKeys(all))
	if err != nil {
		return nil, err
	}
	// The chain includes the state events themselves: v2.1's conflicted
	// subgraph walk looks them up among the auth events.
	chain, err := q.AuthChain(ctx, mapKeys(all))
	if err != nil {
		return nil, err
	}
	chainEntries, err := s.loadEvents(ctx, q, chain)
	if err != nil {
		return nil, err
	}
	rejected := map[string]bool{}
	byID := map[string]*eventEntry{}
	for _, e := range entries {
		byID[e.EventID] = e
		rejected[e.EventID] = e.Rejected
	}
	authEvents := make([]gomatrixserverlib.PDU, 0, len(chainEntries)+1)
	hasCreate := false
	for _, e := range chainEntries {
		authEvents = append(authEvents, e.pdu)
		byID[e.EventID] = e
		rejected[e.EventID] = e.Rejected
		if e.pdu.Type() == spec.MRoomCreate {
			hasCreate = true
		}
	}
	if !hasCreate {
		for _, e := range entries {
			if e.pdu.Type() == spec.MRoomCreate && e.pdu.StateKeyEquals("") {
				authEvents = append(authEvents, e.pdu)
			}
		}
	}
	sets := make([][]gomatrixserverlib.PDU, len(states))
	for i, st := range states {
		sets[i] = make([]gomatrixserverlib.PDU, 0, len(st))
		for _, nid := range st {
			sets[i] = append(sets[i], entries[nid].pdu)
		}
	}
	resolved, err := resolveConflicts(version, sets, authEvents, func(id string) bool { return rejected[id] })
	if err != nil {
		return nil, err
	}
	out := make(stateMap, len(resolved))
	for _, ev := range resolved {
		e, ok := byID[ev.EventID()]
		if !ok {
			return nil, fmt.Errorf("%w: resolved state holds unknown event %s", errStateRes, ev.EventID())
		}
		out[e.StateKeyNID] = e.NID
	}
	return out, nil
}

// resolveConflicts calls gomatrixserverlib's resolution for the room
// version (see resolveStates), turning a panic into an error.
func resolveConflicts(version gomatrixserverlib.RoomVersion, sets [][]gomatrixserverlib.PDU, authEvents []gomatrixserverlib.PDU, isRejected gomatrixserverlib.IsRejected) (out []gomatrixserverlib.PDU, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errStateRes, r)
		}
	}()
	if v, verr := gomatrixserverlib.GetRoomVersion(version); verr == nil && v.StateResAlgorithm() == gomatrixserverlib.StateResV2_1 {
		seen := map[string]bool{}
		var union []gomatrixserverlib.PDU
		for _, set := range sets {
			for _, ev := range set {
				if !seen[ev.EventID()] {
					seen[ev.EventID()] = true
					union = append(union, ev)
				}
			}
		}
		out, err = gomatrixserverlib.ResolveConflicts(version, union, authEvents, userIDForSender, isRejected)
	} else {
		out, err = gomatrixserverlib.ResolveConflictsNew(version, sets, authEvents, userIDForSender, isRejected)
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", errStateRes, err)
	}
	return out, err
}

// stateAfterEvents returns the resolved state after the given events (the
// state before an event whose prev_events they are). All must have state.
func (s *Service) stateAfterEvents(ctx context.Context, w *writeTx, room store.Room, events []*eventEntry) (snapshot, error) {
	nids := make([]int64, 0, len(events))
	for _, e := range events {
		if e.StateAfter == nil {
			return snapshot{}, fmt.Errorf("event %s has no state", e.EventID)
		}
		if !slices.Contains(nids, *e.StateAfter) {
			nids = append(nids, *e.StateAfter)
		}
	}
	return s.resolveSnapshots(ctx, w, room, nids, nil)
}

// resolveSnapshots resolves several snapshots into one, storing it if it is
// new. extraBases are further candidates to store the result as a delta on.
func (s *Service) resolveSnapshots(ctx context.Context, w *writeTx, room store.Room, nids []int64, extraBases []snapshot) (snapshot, error) {
	if len(nids) == 0 {
		return s.loadState(ctx, w.Queries, 0)
	}
	if len(nids) == 1 {
		return s.loadState(ctx, w.Queries, nids[0])
	}
	bases := make([]snapshot, 0, len(nids)+len(extraBases))
	states := make([]stateMap, 0, len(nids))
	for _, nid := range nids {
		sn, err := s.loadState(ctx, w.Queries, nid)
		if err != nil {
			return snapshot{}, err
		}
		bases = append(bases, sn)
		states = append(states, sn.state)
	}
	resolved, err := s.resolveStates(ctx, w.Queries, gomatrixserverlib.RoomVersion(room.Version), states)
	if err != nil {
		return snapshot{}, err
	}
	return s.saveState(ctx, w, room.NID, append(bases, extraBases...), resolved)
}

func mapKeys(m map[int64]bool) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
