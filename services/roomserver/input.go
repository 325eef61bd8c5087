package roomserver

// The input pipeline. Every event, whether built here (SendEvent,
// CreateRoom) or received complete (InputEvents), goes through
// parseAndVerify and then processEvent, inside a room write transaction:
//
//  1. parse with the room version (NewEventFromUntrustedJSON: canonical
//     JSON, fields, content hash; a bad content hash redacts the event as
//     the spec says) -> INVALID on failure
//  2. signatures (VerifyEventSignatures with signing.Verifier) -> INVALID
//  3. already stored? -> DUPLICATE
//  4. unknown prev_events / auth_events -> MISSING_EVENTS, nothing stored
//     (OUTLIER input: prev_events are not needed; stored without state,
//     never published)
//  5. auth against its own auth_events -> REJECTED (stored, flagged)
//  6. state before = state after its prev_events (one prev: reused; several:
//     state resolution)
//  7. auth against the state before -> REJECTED
//  8. auth against the room's current state -> SOFT_FAILED (stored, not a
//     forward extremity, not published)
//  9. store; forward extremities lose its prevs and gain it; current state
//     recomputed (resolved across extremities when there are several);
//     outbox row written; commit; the publisher is woken.
//
// Locally built events must not be stored when refused: processEvent
// reports REJECTED/SOFT_FAILED before writing anything when opts.local is
// set, and the caller rolls back and answers PERMISSION_DENIED.
//
// Federation input (input_fed.go) adds: NEW events with supplied state
// (step 6 takes the state given, resolved with the state after any known
// prev_events, and unknown prev_events are not missing), BACKFILL (stored
// with state, never a forward extremity, no change to the current state,
// no soft failure), and OUT_OF_ROOM memberships (stored as outliers
// without auth checks, published with their stripped state when this
// server is not in the room).

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
	"github.com/myelin-chat/myelin/pkg/parallel"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/signing"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// inputResult is the outcome of one event.
type inputResult struct {
	eventID string
	status  roomserverv1.InputStatus
	reason  string
	missing []string
	nid     int64
	// row is what was stored (when stored), for a run's later events.
	row *store.Event
}

func (r inputResult) stored() bool {
	switch r.status {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED, roomserverv1.InputStatus_INPUT_STATUS_REJECTED,
		roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED:
		return r.nid != 0
	}
	return false
}

func (r inputResult) proto() *roomserverv1.InputEventResult {
	return &roomserverv1.InputEventResult{EventId: r.eventID, Status: r.status, Reason: r.reason, MissingEventIds: r.missing}
}

func invalid(eventID, format string, args ...any) *inputResult {
	return &inputResult{eventID: eventID, status: roomserverv1.InputStatus_INPUT_STATUS_INVALID, reason: fmt.Sprintf(format, args...)}
}

// inputOpts says how an event arrived.
type inputOpts struct {
	outlier bool
	// backfill: history (INPUT_KIND_BACKFILL).
	backfill bool
	// outOfRoom: a local user's membership of a room this server is not in
	// (INPUT_KIND_OUT_OF_ROOM; outlier is set too); stripped is its
	// stripped state as a JSON array ("" for none).
	outOfRoom bool
	stripped  string
	// hasState: stateIDs is the state before the event.
	hasState bool
	stateIDs []string
	// local: built by this room-server for a client; refusals are not
	// stored.
	local bool
	// txn is the client transaction of a local send.
	txn    *roomserverv1.TransactionID
	sender string
	// refs are stored events the caller already holds, by event ID (a
	// local build's prev and auth events): not read again.
	refs map[string]*eventEntry
	// run, for a run of outliers stored in one transaction, answers the
	// lookup instead of the database (fedInput.inputBatch).
	run *runLookup
}

// errKeyServer marks a failure to reach the key-server while verifying.
var errKeyServer = signing.ErrKeyServer

// parseAndVerify runs steps 1 and 2 (step 2 not for an outlier whose
// signatures the calling federation service checked:
// InputEvent.signatures_checked). A non-nil result is the INVALID
// outcome; an error is an infrastructure failure.
func (s *Service) parseAndVerify(ctx context.Context, ie *roomserverv1.InputEvent) (ev gomatrixserverlib.PDU, bad *inputResult, err error) {
	version, eventJSON := ie.GetRoomVersion(), ie.GetEventJson()
	verImpl, verr := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if verr != nil || !verImpl.Stable() {
		return nil, invalid("", "unsupported room version %q", version), nil
	}
	ev, bad = parseUntrusted(verImpl, eventJSON)
	if bad != nil {
		return nil, bad, nil
	}
	if want := ie.GetRoomId(); want != "" && ev.RoomID().String() != want {
		return nil, invalid(ev.EventID(), "room ID mismatch: the event is of room %s, not %s", ev.RoomID().String(), want), nil
	}
	if ev.SenderID().ToUserID() == nil {
		return nil, invalid(ev.EventID(), "invalid sender %q", ev.SenderID()), nil
	}
	if ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("") {
		var c struct {
			RoomVersion *string `json:"room_version"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		v := string(gomatrixserverlib.RoomVersionV1) // the spec's default when absent
		if c.RoomVersion != nil {
			v = *c.RoomVersion
		}
		if v != version {
			return nil, invalid(ev.EventID(), "create event is for room version %q, not %q", v, version), nil
		}
	}
	if ie.GetSignaturesChecked() && ie.GetKind() == roomserverv1.InputKind_INPUT_KIND_OUTLIER {
		return ev, nil, nil
	}
	if verr := gomatrixserverlib.VerifyEventSignatures(ctx, ev, s.verifier, userIDForSender); verr != nil {
		if errors.Is(verr, errKeyServer) {
			return nil, nil, verr
		}
		return nil, invalid(ev.EventID(), "bad signature: %v", verr), nil
	}
	return ev, nil, nil
}

// parseUntrusted parses an event, never panicking.
func parseUntrusted(verImpl gomatrixserverlib.IRoomVersion, eventJSON []byte) (ev gomatrixserverlib.PDU, bad *inputResult) {
	defer func() {
		if r := recover(); r != nil {
			ev, bad = nil, invalid("", "unparseable event: %v", r)
		}
	}()
	ev, err := verImpl.NewEventFromUntrustedJSON(eventJSON)
	if err != nil {
		return nil, invalid("", "unparseable event: %v", err)
	}
	// Computes and memoizes the event ID and room ID (both can panic on
	// garbage) before the PDU is shared.
	_ = ev.EventID()
	_ = ev.RoomID()
	return ev, nil
}

// writeTx is a room write transaction plus what happens at commit.
type writeTx struct {
	*store.Tx
	outbox []store.OutboxEntry
	// afterTx run when the transaction ends, committed or not.
	afterTx []func()
	// onCommit run after a successful commit (before afterTx).
	onCommit []func()
}

// beginWrite starts a room write transaction (see store.BeginRoom; txn,
// when set, is looked up in the same round trip).
func (s *Service) beginWrite(ctx context.Context, roomID string, txn *store.TxnKey) (*writeTx, error) {
	tx, err := s.store.BeginRoom(ctx, roomID, txn)
	if err != nil {
		return nil, err
	}
	return &writeTx{Tx: tx}, nil
}

// commit writes the outbox rows under the stream lock (so stream positions
// follow commit order) and commits; the queued writes, the lock, the
// outbox rows and COMMIT go out in one round trip.
func (s *Service) commit(ctx context.Context, w *writeTx) error {
	defer w.done()
	w.QueueOutbox(w.outbox)
	if err := w.Commit(ctx); err != nil {
		w.Rollback(ctx)
		return fmt.Errorf("commit: %w", err)
	}
	for _, f := range w.onCommit {
		f()
	}
	// Cache invalidations (a redacted target leaving the event cache) take
	// effect before the publisher, woken next, reads the events it sends.
	w.done()
	if len(w.outbox) > 0 {
		s.wakePublisher()
	}
	return nil
}

func (w *writeTx) rollback(ctx context.Context) {
	w.Rollback(ctx)
	w.done()
}

func (w *writeTx) done() {
	for _, f := range w.afterTx {
		f()
	}
	w.afterTx = nil
}

// inputEvents runs complete PDUs (federation's and tests') through the
// pipeline, in order: a run of NEW events of one room (without supplied
// state) in one transaction (fedInput.inputNewRun), other NEW and OUT_OF_ROOM events
// one transaction each, a run of OUTLIER or BACKFILL events of one room in
// one transaction (inputBatch). An infrastructure error fails the call; transactions before
// it stay committed (re-sending them is harmless: they come back
// DUPLICATE).
func (s *Service) inputEvents(ctx context.Context, in []*roomserverv1.InputEvent) ([]inputResult, error) {
	// Steps 1 and 2 (CPU work, independent per event) on every core.
	out := make([]inputResult, len(in))
	parsed := make([]gomatrixserverlib.PDU, len(in))
	errs := make([]error, len(in))
	parallel.Each(len(in), func(i int) {
		ev, bad, err := s.parseAndVerify(ctx, in[i])
		if errs[i] = err; bad != nil {
			out[i] = *bad
		}
		parsed[i] = ev
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i := 0; i < len(in); {
		ev, kind := parsed[i], in[i].GetKind()
		if ev == nil {
			i++
			continue
		}
		if kind == roomserverv1.InputKind_INPUT_KIND_OUTLIER || kind == roomserverv1.InputKind_INPUT_KIND_BACKFILL {
			j := i + 1
			for j < len(in) && parsed[j] != nil && in[j].GetKind() == kind && parsed[j].RoomID() == ev.RoomID() {
				j++
			}
			res, err := fedInput{s}.inputBatch(ctx, in[i:j], parsed[i:j])
			if err != nil {
				return nil, err
			}
			copy(out[i:j], res)
			i = j
			continue
		}
		if kind == roomserverv1.InputKind_INPUT_KIND_NEW && !in[i].GetHasState() {
			j := i + 1
			for j < len(in) && parsed[j] != nil && in[j].GetKind() == kind && !in[j].GetHasState() && parsed[j].RoomID() == ev.RoomID() {
				j++
			}
			if j-i > 1 {
				res, err := fedInput{s}.inputNewRun(ctx, parsed[i:j])
				if err != nil {
					return nil, err
				}
				copy(out[i:j], res)
				i = j
				continue
			}
		}
		res, err := s.inputEvent(ctx, in[i], ev)
		if err != nil {
			return nil, err
		}
		out[i] = res
		i++
	}
	return out, nil
}

// inputEvent runs one NEW or OUT_OF_ROOM event in its own transaction.
func (s *Service) inputEvent(ctx context.Context, ie *roomserverv1.InputEvent, ev gomatrixserverlib.PDU) (inputResult, error) {
	opts := inputOpts{hasState: ie.GetHasState(), stateIDs: ie.GetStateEventIds()}
	switch ie.GetKind() {
	case roomserverv1.InputKind_INPUT_KIND_NEW:
	case roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM:
		stripped, bad, err := fedInput{s}.checkOutOfRoom(ctx, ev, ie.GetStrippedState())
		if err != nil || bad != nil {
			return derefResult(bad), err
		}
		opts = inputOpts{outlier: true, outOfRoom: true, stripped: stripped}
	default:
		return *invalid(ev.EventID(), "unknown input kind %s", ie.GetKind()), nil
	}
	if ev.StateKey() != nil {
		if err := s.ensureStateKeys(ctx, []store.StateKey{{Type: ev.Type(), StateKey: *ev.StateKey()}}); err != nil {
			return inputResult{}, err
		}
	}
	roomID := ev.RoomID().String()
	unlock := s.locks.lock(roomID)
	defer unlock()
	w, err := s.beginWrite(ctx, roomID, nil)
	if err != nil {
		return inputResult{}, err
	}
	res, err := s.processEvent(ctx, w, ev, opts)
	if err != nil || !res.stored() {
		w.rollback(ctx)
		return res, err
	}
	if err := s.commit(ctx, w); err != nil {
		return inputResult{}, err
	}
	s.logResult(ev, res)
	return res, nil
}

func derefResult(r *inputResult) inputResult {
	if r == nil {
		return inputResult{}
	}
	return *r
}

func (s *Service) logResult(ev gomatrixserverlib.PDU, res inputResult) {
	if res.status == roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED {
		s.log.Debug("event accepted", logging.RoomID(ev.RoomID().String()), logging.EventID(res.eventID),
			zap.String("type", ev.Type()))
		return
	}
	s.log.Info("event stored but not accepted", logging.RoomID(ev.RoomID().String()), logging.EventID(res.eventID),
		zap.String("status", res.status.String()), zap.String("reason", res.reason))
}

// processEvent runs steps 3 to 9 for a parsed, verified event. The caller
// holds the room's lock and owns w; it commits when the result is stored.
func (s *Service) processEvent(ctx context.Context, w *writeTx, ev gomatrixserverlib.PDU, opts inputOpts) (inputResult, error) {
	res := inputResult{eventID: ev.EventID()}
	roomID := ev.RoomID().String()
	isCreate := ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("")

	// 3. Duplicate? (One round trip reads the event, its prev and auth
	// events, any supplied state and the redactions waiting for it, and
	// reserves its NID.)
	prevIDs, authIDs := ev.PrevEventIDs(), ev.AuthEventIDs()
	ids := []string{res.eventID}
	for _, id := range slices.Concat(prevIDs, authIDs, opts.stateIDs) {
		if _, ok := opts.refs[id]; !ok {
			ids = append(ids, id)
		}
	}
	var lookup store.InputLookup
	var reserved bool
	if opts.local && len(ids) == 1 {
		lookup.NextNID, reserved = w.ReservedNID()
	}
	if reserved {
		// A local event built here on the room's current state, holding
		// all its prev and auth events: only its NID is needed, and
		// BeginRoom reserved one. Its event ID is new by construction (a
		// hash over a fresh timestamp and the current extremities, or
		// random in room versions 1 and 2), so no stored event and no
		// waiting redaction can name it; were it stored after all, the
		// unique event ID would fail the commit.
	} else if opts.run != nil {
		lookup = opts.run.lookup(res.eventID)
	} else {
		var err error
		if lookup, err = w.LookupInput(ctx, res.eventID, ids); err != nil {
			return res, err
		}
	}
	found, err := s.eventEntries(lookup.Events)
	if err != nil {
		return res, err
	}
	opts.run.addStored(found, ids)
	for id, e := range opts.refs {
		if id != res.eventID {
			found[id] = e
		}
	}
	old, known := found[res.eventID]
	if known && (!old.Outlier || opts.outlier) {
		res.status = roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE
		res.nid = old.NID
		return res, nil
	}

	room, err := w.Room(ctx, roomID)
	newRoom := errors.Is(err, store.ErrNotFound)
	switch {
	case newRoom && !isCreate && !opts.outOfRoom:
		res.status = roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS
		res.reason = "unknown room"
		res.missing = slices.Concat(ev.AuthEventIDs(), ev.PrevEventIDs())
		return res, nil
	case newRoom:
		room = store.Room{RoomID: roomID, Version: string(ev.Version()), Stub: !isCreate}
	case err != nil:
		return res, err
	case room.Version != string(ev.Version()):
		return *invalid(res.eventID, "room %s has version %s, not %s", roomID, room.Version, ev.Version()), nil
	case isCreate && !room.Stub:
		return *invalid(res.eventID, "room %s already has a create event", roomID), nil
	}

	// 4. Missing events. Out-of-room events are stored without their auth
	// events (this server has none of the room); supplied state stands in
	// for unknown prev_events.
	refs := make(map[string]*eventEntry, len(prevIDs)+len(authIDs))
	for _, id := range slices.Concat(prevIDs, authIDs) {
		if e, ok := found[id]; ok {
			refs[id] = e
		}
	}
	if !opts.outOfRoom {
		for _, id := range authIDs {
			if _, ok := refs[id]; !ok && !slices.Contains(res.missing, id) {
				res.missing = append(res.missing, id)
			}
		}
	}
	if !opts.outlier && !opts.hasState {
		for _, id := range prevIDs {
			if e, ok := refs[id]; (!ok || e.StateAfter == nil) && !slices.Contains(res.missing, id) {
				res.missing = append(res.missing, id)
			}
		}
	}
	for _, id := range opts.stateIDs {
		if _, ok := found[id]; !ok && !slices.Contains(res.missing, id) {
			res.missing = append(res.missing, id)
		}
	}
	if len(res.missing) > 0 {
		res.status = roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS
		res.reason = "prev_events, auth_events or supplied state events are unknown (or prev_events are outliers, without state)"
		return res, nil
	}

	row := store.Event{
		NID: lookup.NextNID, RoomNID: room.NID, EventID: res.eventID, Type: ev.Type(), Sender: string(ev.SenderID()),
		Depth: ev.Depth(), PrevIDs: prevIDs, JSON: ev.JSON(), Outlier: opts.outlier,
	}
	if known {
		row.NID = old.NID
		w.afterTx = append(w.afterTx, func() { s.forgetEvent(old.NID) })
	}
	if ev.StateKey() != nil {
		if row.StateKeyNID, err = s.stateKeyNID(ctx, w, store.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}); err != nil {
			return res, err
		}
	}

	for _, e := range refs {
		if !newRoom && e.RoomNID != room.NID {
			return *invalid(res.eventID, "references %s of another room", e.EventID), nil
		}
	}

	// 5. Auth against its own auth_events: they must be exactly what the
	// auth events selection (StateNeededForAuth) allows, none rejected,
	// and they must allow the event.
	if opts.outOfRoom {
		return fedInput{s}.storeOutOfRoom(ctx, w, room, newRoom, row, ev, res, opts)
	}
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples()
	seen := map[gomatrixserverlib.StateKeyTuple]bool{}
	var authPDUs []gomatrixserverlib.PDU
	for _, id := range authIDs {
		e := refs[id]
		row.AuthNIDs = append(row.AuthNIDs, e.NID)
		var key gomatrixserverlib.StateKeyTuple
		if sk := e.pdu.StateKey(); sk != nil {
			key = gomatrixserverlib.StateKeyTuple{EventType: e.pdu.Type(), StateKey: *sk}
		}
		switch {
		case res.reason != "":
		case e.Rejected:
			res.reason = fmt.Sprintf("auth event %s was rejected", id)
		case !slices.Contains(needed, key):
			res.reason = fmt.Sprintf("auth event %s (%s %q) is not one the auth rules use", id, key.EventType, key.StateKey)
		case seen[key]:
			res.reason = fmt.Sprintf("auth events hold two %s %q events", key.EventType, key.StateKey)
		}
		seen[key] = true
		authPDUs = append(authPDUs, e.pdu)
	}
	if res.reason == "" {
		provider, err := gomatrixserverlib.NewAuthEvents(authPDUs)
		if err != nil {
			res.reason = fmt.Sprintf("bad auth events: %v", err)
		} else if err := checkAuth(ev, provider); err != nil {
			res.reason = fmt.Sprintf("not allowed by its auth events: %v", err)
		}
	}
	rejected := res.reason != ""
	if rejected && (opts.local || newRoom) {
		// A refused local event is not stored; neither is a refused create
		// event of a room that does not exist.
		res.status = roomserverv1.InputStatus_INPUT_STATUS_REJECTED
		return res, nil
	}
	if newRoom {
		if room.NID, err = w.InsertRoom(ctx, roomID, room.Version, false); err != nil {
			return res, err
		}
		row.RoomNID = room.NID
	} else if isCreate && room.Stub && !rejected {
		// The create event of a room known so far only from out-of-room
		// memberships.
		w.QueueClearStub(room.NID)
		room.Stub = false
	}

	if opts.outlier {
		row.Rejected, row.Reason = rejected, res.reason
		return s.storeRejectedOrOutlier(ctx, w, row, res, known)
	}

	// 6. State before: the state after its prev events, or the state
	// supplied (resolved with the state after the prev events known).
	prevs := make([]*eventEntry, 0, len(prevIDs))
	for _, id := range prevIDs {
		if e, ok := refs[id]; ok && e.StateAfter != nil {
			prevs = append(prevs, e)
		}
	}
	var before snapshot
	if opts.hasState {
		var bad *inputResult
		before, bad, err = fedInput{s}.stateBeforeSupplied(ctx, w, room, ev, prevs, found, opts.stateIDs)
		if err != nil || bad != nil {
			return derefResult(bad), err
		}
	} else if before, err = s.stateAfterEvents(ctx, w, room, prevs); err != nil {
		return res, err
	}
	// Copies of the NID: a pointer into before would keep its whole state
	// map alive for as long as the event (in the event cache, #20).
	row.StateBefore, row.StateAfter = nidPtr(before.nid), nidPtr(before.nid)

	// 7. Auth against the state before. When the state before holds
	// exactly the event's own auth events (always so for local events),
	// this is step 5's check again, which passed.
	if !rejected {
		tuples := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples()
		pdus, err := s.stateEventsFor(ctx, w.Queries, before.state, tuples)
		if err != nil {
			return res, err
		}
		if !sameEventIDs(pdus, authIDs) {
			provider, err := gomatrixserverlib.NewAuthEvents(pdus)
			if err != nil {
				return res, err
			}
			if err := checkAuth(ev, provider); err != nil {
				res.reason = fmt.Sprintf("not allowed by the state before it: %v", err)
				rejected = true
			}
		}
	}
	if rejected {
		if opts.local {
			res.status = roomserverv1.InputStatus_INPUT_STATUS_REJECTED
			return res, nil
		}
		row.Rejected, row.Reason = true, res.reason
		return s.storeRejectedOrOutlier(ctx, w, row, res, known)
	}

	// 8. Soft failure: auth against the room's current state. Not for
	// history (backfill), not when the room has no current state yet (its
	// first event with state: a join through send_join), and not for a
	// local user's own membership whose state the resident server gave.
	rewrites := fedInput{s}.rewritesState(ev, opts)
	softFailed := false
	if !newRoom && !opts.backfill && !rewrites && len(room.Extremities) > 0 && room.SnapshotNID != before.nid {
		current, err := s.loadState(ctx, w.Queries, room.SnapshotNID)
		if err != nil {
			return res, err
		}
		provider, err := s.authProviderFor(ctx, w.Queries, ev, current.state)
		if err != nil {
			return res, err
		}
		if err := checkAuth(ev, provider); err != nil {
			res.reason = fmt.Sprintf("not allowed by the room's current state: %v", err)
			softFailed = true
			if opts.local {
				res.status = roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED
				return res, nil
			}
		}
	}

	// 9. Store.
	if ev.StateKey() != nil {
		next := before.state.clone()
		next[row.StateKeyNID] = row.NID
		after, err := s.saveState(ctx, w, room.NID, []snapshot{before}, next)
		if err != nil {
			return res, err
		}
		row.StateAfter = nidPtr(after.nid)
	}
	row.SoftFailed, row.Reason = softFailed, res.reason
	// A redaction that arrived first is applied as the event is stored.
	if row.JSON, err = s.redactIfPending(ctx, w, room, ev, lookup.Redactions); err != nil {
		return res, err
	}
	if res.nid, err = s.insertEvent(ctx, w, row, known); err != nil {
		return res, err
	}
	res.row = &row
	s.cacheOnCommit(w, row, ev, known)
	if softFailed {
		res.status = roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED
		return res, nil
	}
	if ev.Type() == spec.MRoomRedaction {
		if err := s.recordRedaction(ctx, w, room, ev, row.NID, before.state); err != nil {
			return res, err
		}
	}
	res.status = roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED
	if opts.backfill {
		w.outbox = append(w.outbox, store.OutboxEntry{RoomNID: room.NID, EventNID: row.NID, Kind: store.OutboxBackfill})
		return res, nil
	}
	if rewrites {
		// The resident server's state replaces what this server had of the
		// room (nothing, or what it knew before it left).
		room.Extremities = nil
	}
	return res, s.advanceRoom(ctx, w, room, row, prevs, opts)
}

// sameEventIDs reports whether pdus are exactly the events named by ids
// (ids hold no duplicates: step 5 rejects those).
func sameEventIDs(pdus []gomatrixserverlib.PDU, ids []string) bool {
	if len(pdus) != len(ids) {
		return false
	}
	for _, p := range pdus {
		if !slices.Contains(ids, p.EventID()) {
			return false
		}
	}
	return true
}

// storeRejectedOrOutlier stores an event that does not join the graph.
func (s *Service) storeRejectedOrOutlier(ctx context.Context, w *writeTx, row store.Event, res inputResult, known bool) (inputResult, error) {
	var err error
	if res.nid, err = s.insertEvent(ctx, w, row, known); err != nil {
		return res, err
	}
	res.row = &row
	res.status = roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED
	if row.Rejected {
		res.status = roomserverv1.InputStatus_INPUT_STATUS_REJECTED
	}
	return res, nil
}

// insertEvent stores row: a new event is queued (it goes out with the
// commit); a known outlier is replaced in place right away.
func (s *Service) insertEvent(ctx context.Context, w *writeTx, row store.Event, known bool) (int64, error) {
	if known {
		return w.InsertEvent(ctx, row)
	}
	w.QueueNewEvent(row)
	return row.NID, nil
}

// cacheOnCommit puts a newly stored event into the event cache once its
// transaction commits: the next event of the room names it in prev_events
// and would otherwise read it back. Only when ev is exactly what was
// stored: a replaced outlier (dropped from the cache at the end of the
// transaction) or an event stored redacted is read again when needed.
func (s *Service) cacheOnCommit(w *writeTx, row store.Event, ev gomatrixserverlib.PDU, known bool) {
	if known || !bytes.Equal(row.JSON, ev.JSON()) {
		return
	}
	row.JSON = nil
	row.RoomID, row.RoomVersion = ev.RoomID().String(), string(ev.Version())
	e := &eventEntry{Event: row, pdu: ev}
	w.onCommit = append(w.onCommit, func() { s.events.Put(e.NID, e) })
}

// advanceRoom makes an accepted event a forward extremity, recomputes the
// room's current state and queues the outbox row.
func (s *Service) advanceRoom(ctx context.Context, w *writeTx, room store.Room, row store.Event, prevs []*eventEntry, opts inputOpts) error {
	extremities := []int64{row.NID}
	for _, nid := range room.Extremities {
		if !slices.ContainsFunc(prevs, func(p *eventEntry) bool { return p.NID == nid }) {
			extremities = append(extremities, nid)
		}
	}
	oldCurrent, err := s.loadState(ctx, w.Queries, room.SnapshotNID)
	if err != nil {
		return err
	}
	var current snapshot
	if len(extremities) == 1 {
		current, err = s.loadState(ctx, w.Queries, *row.StateAfter)
	} else {
		others, lerr := s.loadEvents(ctx, w.Queries, extremities[1:])
		if lerr != nil {
			return lerr
		}
		nids := []int64{*row.StateAfter}
		for _, e := range others {
			if e.StateAfter != nil && !slices.Contains(nids, *e.StateAfter) {
				nids = append(nids, *e.StateAfter)
			}
		}
		current, err = s.resolveSnapshots(ctx, w, room, nids, []snapshot{oldCurrent})
	}
	if err != nil {
		return err
	}
	depth := max(room.Depth, row.Depth)
	w.QueueUpdateRoom(room.NID, current.nid, extremities, depth)
	entry := store.OutboxEntry{RoomNID: room.NID, EventNID: row.NID}
	entry.AddedStateNIDs, entry.RemovedStateNIDs = stateChange(oldCurrent.state, current.state)
	if opts.txn != nil {
		w.QueueTransaction(room.NID, opts.sender, opts.txn.GetDeviceId(), opts.txn.GetTxnId(), row.EventID)
		entry.HasTxn, entry.TxnDeviceID, entry.TxnID = true, opts.txn.GetDeviceId(), opts.txn.GetTxnId()
	}
	w.outbox = append(w.outbox, entry)
	return nil
}

// stateChange lists the events that entered and left the state.
func stateChange(old, next stateMap) (added, removed []int64) {
	keys, vals := old.diff(next)
	for i, k := range keys {
		if vals[i] != 0 {
			added = append(added, vals[i])
		}
		if v, ok := old[k]; ok {
			removed = append(removed, v)
		}
	}
	return added, removed
}
