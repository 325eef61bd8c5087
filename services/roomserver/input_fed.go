package roomserver

// Federation input: runs of outliers and backfilled events in one
// transaction, supplied state, and out-of-room memberships. The
// room-server makes no federation requests: the federation services fetch
// what is missing and input it here.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// fedInput holds the federation parts of the input pipeline (a view of
// the Service).
type fedInput struct{ *Service }

// inputBatch stores a run of OUTLIER or BACKFILL events of one room in one
// transaction. Each event is processed after the events of the run it
// depends on (auth_events for outliers, prev_events for backfill), so a
// caller may give an auth chain or a /backfill answer in any order. The
// outbox rows of backfilled events are written newest first: a consumer
// that places each backfilled event before everything it has of the room
// keeps them in order.
func (s fedInput) inputBatch(ctx context.Context, ins []*roomserverv1.InputEvent, evs []gomatrixserverlib.PDU) ([]inputResult, error) {
	backfill := ins[0].GetKind() == roomserverv1.InputKind_INPUT_KIND_BACKFILL
	order := dependencyOrder(evs, !backfill)
	var keys []store.StateKey
	for _, ev := range evs {
		if sk := ev.StateKey(); sk != nil {
			keys = append(keys, store.StateKey{Type: ev.Type(), StateKey: *sk})
		}
	}
	if err := s.ensureStateKeys(ctx, keys); err != nil {
		return nil, err
	}
	roomID := evs[0].RoomID().String()
	unlock := s.locks.lock(roomID)
	defer unlock()
	w, err := s.beginWrite(ctx, roomID, nil)
	if err != nil {
		return nil, err
	}
	var run *runLookup
	if !backfill {
		if run, err = s.lookupRun(ctx, w, evs); err != nil {
			w.rollback(ctx)
			return nil, err
		}
	}
	results := make([]inputResult, len(evs))
	stored := false
	for _, i := range order {
		opts := inputOpts{outlier: !backfill, backfill: backfill, run: run}
		if backfill {
			opts.hasState, opts.stateIDs = ins[i].GetHasState(), ins[i].GetStateEventIds()
		}
		res, err := s.processEvent(ctx, w, evs[i], opts)
		if err != nil {
			w.rollback(ctx)
			return nil, err
		}
		results[i] = res
		stored = stored || res.stored()
		if !backfill && res.stored() && res.row != nil {
			// Stored outliers enter the event cache too: a join's
			// state is read again at once (the join, its publication).
			s.cacheOnCommit(w, *res.row, evs[i], false)
		}
		if err := run.added(ctx, w, evs[i], res); err != nil {
			w.rollback(ctx)
			return nil, err
		}
	}
	if !stored {
		w.rollback(ctx)
		return results, nil
	}
	slices.Reverse(w.outbox)
	if err := s.commit(ctx, w); err != nil {
		return nil, err
	}
	for _, i := range order {
		if results[i].stored() {
			s.logResult(evs[i], results[i])
		}
	}
	return results, nil
}

// inputNewRun runs NEW events of one room, without supplied state, in one
// transaction, in the order given (a federation transaction's PDUs of a
// room, each usually on the one before it): one commit instead of one per
// event. Each event gets the result it would get alone; one that is not
// stored (a duplicate, missing events) writes nothing, and the caller may
// input it again once it has what was missing.
func (s fedInput) inputNewRun(ctx context.Context, evs []gomatrixserverlib.PDU) ([]inputResult, error) {
	var keys []store.StateKey
	for _, ev := range evs {
		if sk := ev.StateKey(); sk != nil {
			keys = append(keys, store.StateKey{Type: ev.Type(), StateKey: *sk})
		}
	}
	if err := s.ensureStateKeys(ctx, keys); err != nil {
		return nil, err
	}
	roomID := evs[0].RoomID().String()
	unlock := s.locks.lock(roomID)
	defer unlock()
	w, err := s.beginWrite(ctx, roomID, nil)
	if err != nil {
		return nil, err
	}
	// One read for the whole run (the events it refers to, the
	// redactions waiting for its events, its NIDs) instead of one per
	// event. A redaction of the run may target a later event of the run,
	// which the read made before it cannot show: after a redaction the
	// rest of the run reads for itself (through the transaction, which
	// sees the run's writes).
	run, err := s.lookupRun(ctx, w, evs)
	if err != nil {
		w.rollback(ctx)
		return nil, err
	}
	results := make([]inputResult, len(evs))
	stored := false
	for i, ev := range evs {
		if results[i], err = s.processEvent(ctx, w, ev, inputOpts{run: run}); err != nil {
			w.rollback(ctx)
			return nil, err
		}
		stored = stored || results[i].stored()
		if ev.Type() == spec.MRoomRedaction {
			run = nil
		}
		if err := run.added(ctx, w, ev, results[i]); err != nil {
			w.rollback(ctx)
			return nil, err
		}
	}
	if !stored {
		w.rollback(ctx)
		return results, nil
	}
	if err := s.commit(ctx, w); err != nil {
		return nil, err
	}
	for i, ev := range evs {
		if results[i].stored() {
			s.logResult(ev, results[i])
		}
	}
	return results, nil
}

// runLookup answers processEvent's lookups for a run of outliers stored in
// one transaction (a send_join answer's state and auth chain, a gap's
// events) from one read made before the run, instead of a round trip per
// event: the stored events the run refers to, a fresh NID per event, the
// redactions waiting for the run's events, and the run's events stored so
// far. (A redaction is never an auth or state event, so no event of a run
// of outliers redacts another.) A nil runLookup does nothing.
type runLookup struct {
	redactions map[string][]store.Redaction
	nids       []int64
	// known are the stored events the run refers to and the run's events
	// stored so far, by event ID.
	known map[string]*eventEntry
}

func (s fedInput) lookupRun(ctx context.Context, w *writeTx, evs []gomatrixserverlib.PDU) (*runLookup, error) {
	eventIDs := make([]string, len(evs))
	ids := make([]string, 0, 4*len(evs))
	for i, ev := range evs {
		eventIDs[i] = ev.EventID()
		ids = append(ids, eventIDs[i])
		ids = append(ids, ev.PrevEventIDs()...)
		ids = append(ids, ev.AuthEventIDs()...)
	}
	slices.Sort(ids)
	rows, redactions, nids, err := w.LookupInputs(ctx, eventIDs, slices.Compact(ids))
	if err != nil {
		return nil, err
	}
	known, err := s.eventEntries(rows)
	if err != nil {
		return nil, err
	}
	run := &runLookup{redactions: map[string][]store.Redaction{}, nids: nids, known: known}
	for _, r := range redactions {
		run.redactions[r.TargetEventID] = append(run.redactions[r.TargetEventID], r)
	}
	return run, nil
}

// lookup is LookupInput's answer for eventID, but for the events, which
// addStored gives.
func (r *runLookup) lookup(eventID string) store.InputLookup {
	var out store.InputLookup
	if len(r.nids) > 0 {
		out.NextNID, r.nids = r.nids[0], r.nids[1:]
	}
	out.Redactions = r.redactions[eventID]
	return out
}

// addStored adds to found the events among ids that the run knows.
func (r *runLookup) addStored(found map[string]*eventEntry, ids []string) {
	if r == nil {
		return
	}
	for _, id := range ids {
		if e, ok := r.known[id]; ok {
			found[id] = e
		}
	}
}

// added records an event of the run that was stored, as LookupInput would
// read it back (an event stored redacted, because a redaction of it was
// waiting, as stored).
func (r *runLookup) added(ctx context.Context, w *writeTx, ev gomatrixserverlib.PDU, res inputResult) error {
	if r == nil || !res.stored() || res.row == nil {
		return nil
	}
	row := *res.row
	room, err := w.Room(ctx, ev.RoomID().String())
	if err != nil {
		return err
	}
	row.RoomNID, row.RoomID, row.RoomVersion = room.NID, room.RoomID, string(ev.Version())
	if !bytes.Equal(row.JSON, ev.JSON()) {
		e, err := newEventEntry(row)
		if err != nil {
			return err
		}
		r.known[res.eventID] = e
		return nil
	}
	row.JSON = nil
	r.known[res.eventID] = &eventEntry{Event: row, pdu: ev}
	return nil
}

// dependencyOrder returns the indices of evs so that an event comes after
// the events of evs it names in auth_events (byAuth) or prev_events; other
// events keep the order given.
func dependencyOrder(evs []gomatrixserverlib.PDU, byAuth bool) []int {
	index := make(map[string]int, len(evs))
	for i, ev := range evs {
		index[ev.EventID()] = i
	}
	state := make([]byte, len(evs)) // 0 new, 1 on the stack, 2 placed
	order := make([]int, 0, len(evs))
	type frame struct{ i, next int }
	for root := range evs {
		if state[root] != 0 {
			continue
		}
		stack := []frame{{i: root}}
		state[root] = 1
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			deps := evs[top.i].PrevEventIDs()
			if byAuth {
				deps = evs[top.i].AuthEventIDs()
			}
			pushed := false
			for top.next < len(deps) {
				j, ok := index[deps[top.next]]
				top.next++
				if ok && state[j] == 0 {
					state[j] = 1
					stack = append(stack, frame{i: j})
					pushed = true
					break
				}
			}
			if pushed {
				continue
			}
			state[top.i] = 2
			order = append(order, top.i)
			stack = stack[:len(stack)-1]
		}
	}
	return order
}

// rewritesState reports whether an event's supplied state replaces the
// room's forward extremities and current state: a local user's own join
// with the state the resident server gave (send_join). This server was
// not in the room, so whatever it had (nothing, or the state from before
// it left) is stale.
func (s fedInput) rewritesState(ev gomatrixserverlib.PDU, opts inputOpts) bool {
	if !opts.hasState || opts.backfill || ev.Type() != spec.MRoomMember || !ev.StateKeyEquals(string(ev.SenderID())) {
		return false
	}
	if m, _ := ev.Membership(); m != spec.Join {
		return false
	}
	u := ev.SenderID().ToUserID()
	return u != nil && u.Domain() == s.serverName
}

// stateBeforeSupplied builds the state before an event from the state
// supplied with it (stored events of the room; rejected ones are left out,
// as they never count as state) and resolves it with the state after the
// prev_events that are known.
func (s fedInput) stateBeforeSupplied(ctx context.Context, w *writeTx, room store.Room, ev gomatrixserverlib.PDU,
	prevs []*eventEntry, found map[string]*eventEntry, ids []string) (snapshot, *inputResult, error) {
	supplied := stateMap{}
	for _, id := range ids {
		e := found[id]
		switch {
		case e.RoomNID != room.NID:
			return snapshot{}, invalid(ev.EventID(), "supplied state event %s is of another room", id), nil
		case e.pdu.StateKey() == nil:
			return snapshot{}, invalid(ev.EventID(), "supplied state event %s is not a state event", id), nil
		case e.Rejected:
			continue
		}
		if other, dup := supplied[e.StateKeyNID]; dup && other != e.NID {
			return snapshot{}, invalid(ev.EventID(), "supplied state holds two %s %q events", e.pdu.Type(), *e.pdu.StateKey()), nil
		}
		supplied[e.StateKeyNID] = e.NID
	}
	bases := []snapshot{{state: stateMap{}}}
	if room.SnapshotNID != 0 {
		current, err := s.loadState(ctx, w.Queries, room.SnapshotNID)
		if err != nil {
			return snapshot{}, nil, err
		}
		bases = append(bases, current)
	}
	nids := []int64{}
	for _, p := range prevs {
		sn, err := s.loadState(ctx, w.Queries, *p.StateAfter)
		if err != nil {
			return snapshot{}, nil, err
		}
		bases = append(bases, sn)
		if !slices.Contains(nids, sn.nid) {
			nids = append(nids, sn.nid)
		}
	}
	given, err := s.saveState(ctx, w, room.NID, bases, supplied)
	if err != nil {
		return snapshot{}, nil, err
	}
	if len(nids) == 0 {
		return given, nil, nil
	}
	before, err := s.resolveSnapshots(ctx, w, room, append([]int64{given.nid}, nids...), nil)
	return before, nil, err
}

// storeOutOfRoom stores a local user's membership of a room this server is
// not in, as an outlier (its auth events are mostly unknown: nothing is
// checked but the format and signatures, as for an invite), creating a
// stub room when the room is unknown. It is published (kind OUT_OF_ROOM,
// with its stripped state) unless this server is in the room after all,
// when the event reaches the room's graph the usual way.
func (s fedInput) storeOutOfRoom(ctx context.Context, w *writeTx, room store.Room, newRoom bool, row store.Event,
	ev gomatrixserverlib.PDU, res inputResult, opts inputOpts) (inputResult, error) {
	var err error
	if newRoom {
		if room.NID, err = w.InsertRoom(ctx, room.RoomID, room.Version, true); err != nil {
			return res, err
		}
		row.RoomNID = room.NID
	}
	found, err := s.eventsByID(ctx, w.Queries, ev.AuthEventIDs())
	if err != nil {
		return res, err
	}
	for _, id := range ev.AuthEventIDs() {
		if e, ok := found[id]; ok && e.RoomNID == room.NID {
			row.AuthNIDs = append(row.AuthNIDs, e.NID)
		}
	}
	inRoom := false
	if !room.Stub && room.SnapshotNID != 0 {
		members, err := s.joinedLocalMembers(ctx, w.Queries, room)
		if err != nil {
			return res, err
		}
		inRoom = len(members) > 0
	}
	if res.nid, err = s.insertEvent(ctx, w, row, false); err != nil {
		return res, err
	}
	s.cacheOnCommit(w, row, ev, false)
	res.status = roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED
	if inRoom {
		res.reason = "this server is in the room: stored as an outlier, not published"
		return res, nil
	}
	w.outbox = append(w.outbox, store.OutboxEntry{RoomNID: room.NID, EventNID: row.NID, Kind: store.OutboxOutOfRoom,
		StrippedState: opts.stripped})
	return res, nil
}

// outOfRoomMemberships are the memberships INPUT_KIND_OUT_OF_ROOM takes.
var outOfRoomMemberships = []string{spec.Invite, spec.Leave, spec.Knock, spec.Ban}

// strippedEvent is a stripped state event as clients see it.
type strippedEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Sender   string          `json:"sender"`
	Content  json.RawMessage `json:"content"`
}

// checkOutOfRoom checks an out-of-room membership and its stripped state
// (invite_room_state, knock_room_state) and returns the stripped state as
// a JSON array. Entries must be PDUs of the room's version that pass the
// signature checks and are of the same room; room versions 1-11 may still
// carry plain stripped events (the spec's migration: accepted, and bad
// entries dropped with a warning), later versions may not, and their
// invites and knocks must carry the create event (which, from v12 on, is
// what the room ID is derived from).
func (s fedInput) checkOutOfRoom(ctx context.Context, ev gomatrixserverlib.PDU, entries [][]byte) (string, *inputResult, error) {
	bad := func(format string, args ...any) (string, *inputResult, error) {
		return "", invalid(ev.EventID(), format, args...), nil
	}
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return bad("an out-of-room event must be an m.room.member event")
	}
	target, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil || target.Domain() != s.serverName {
		return bad("an out-of-room membership must be of a user of this server, not %q", *ev.StateKey())
	}
	membership, err := ev.Membership()
	if err != nil || !slices.Contains(outOfRoomMemberships, membership) {
		return bad("an out-of-room membership must be invite, leave, knock or ban")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
	if err != nil {
		return "", nil, err
	}
	strict := verImpl.DomainlessRoomIDs()
	var out []strippedEvent
	hasCreate := false
	for i, raw := range entries {
		entry, problem, err := s.strippedEntry(ctx, verImpl, ev.RoomID().String(), raw)
		if err != nil {
			return "", nil, err
		}
		if problem != "" {
			if strict {
				return bad("stripped state entry %d: %s", i, problem)
			}
			s.log.Warn("dropping a bad stripped state entry of an out-of-room membership", logging.EventID(ev.EventID()),
				zap.Int("entry", i), zap.String("problem", problem))
			continue
		}
		if entry.Type == spec.MRoomCreate && entry.StateKey == "" {
			hasCreate = true
		}
		out = append(out, entry)
	}
	if strict && !hasCreate && (membership == spec.Invite || membership == spec.Knock) {
		return bad("the stripped state of an invite or knock must hold the room's m.room.create event")
	}
	if len(out) == 0 {
		return "", nil, nil
	}
	raw, err := json.Marshal(out)
	return string(raw), nil, err
}

// strippedEntry checks one stripped state entry; problem says what is
// wrong with it.
func (s fedInput) strippedEntry(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, roomID string, raw []byte) (strippedEvent, string, error) {
	pdu, bad := parseUntrusted(verImpl, raw)
	if bad != nil {
		if verImpl.DomainlessRoomIDs() {
			return strippedEvent{}, "not a PDU of room version " + string(verImpl.Version()) + ": " + bad.reason, nil
		}
		var e strippedEvent
		var content map[string]json.RawMessage
		if err := json.Unmarshal(raw, &e); err != nil || e.Type == "" || json.Unmarshal(e.Content, &content) != nil || content == nil {
			return strippedEvent{}, "neither a PDU nor a stripped state event", nil
		}
		return e, "", nil
	}
	if pdu.StateKey() == nil {
		return strippedEvent{}, "not a state event", nil
	}
	if pdu.RoomID().String() != roomID {
		return strippedEvent{}, fmt.Sprintf("of room %s, not %s", pdu.RoomID().String(), roomID), nil
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, s.verifier, userIDForSender); err != nil {
		if errors.Is(err, errKeyServer) {
			return strippedEvent{}, "", err
		}
		return strippedEvent{}, "bad signature: " + err.Error(), nil
	}
	return strippedEvent{Type: pdu.Type(), StateKey: *pdu.StateKey(), Sender: string(pdu.SenderID()), Content: json.RawMessage(pdu.Content())}, "", nil
}
