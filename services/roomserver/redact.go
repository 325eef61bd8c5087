package roomserver

// Redactions. A redaction is an ordinary event for the auth rules (which,
// from room version 3 on, accept nearly every redaction); whether it takes
// effect is decided here, as the "handling redactions" section of the room
// versions says: the target is redacted when the redaction's sender has
// the redact power level (in the state before the redaction) or shares the
// target sender's server. Local clients are held to the client-server rule
// on top: redacting someone else's event needs the redact power level
// (checkLocalRedaction), so a user cannot redact another local user's
// events just by being on the same server.
//
// Applying a redaction replaces the target's stored event_json with its
// redacted form (gomatrixserverlib's redaction algorithm for the room
// version): the event ID and the reference hash are computed over the
// redacted form, so the stored event still verifies, and the original
// content is gone from storage. A redaction that arrives before its
// target waits in the redactions table and is applied when the target is
// stored (redactIfPending).

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// redactsInContent reports whether a room version carries a redaction's
// target in content.redacts (v11 and later) rather than top-level.
func redactsInContent(v gomatrixserverlib.RoomVersion) bool {
	switch v {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		return false
	}
	return true
}

// redactsOf returns the ID of the event a redaction redacts ("" if none).
func redactsOf(ev gomatrixserverlib.PDU) string {
	if ev.Type() != spec.MRoomRedaction {
		return ""
	}
	if !redactsInContent(ev.Version()) {
		return ev.Redacts()
	}
	var c struct {
		Redacts string `json:"redacts"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.Redacts
}

// normalizeRedaction puts a redaction template's target where its room
// version wants it: content.redacts from v11 on, top-level before. From
// v11 on the target is also kept top-level, as servers built on older
// gomatrixserverlib (Dendrite v0.13.8, which does the same for its own
// redactions) only read it there and would otherwise never apply this
// server's redactions; the spec's v11 format does not forbid the extra
// key, it is covered by the hashes and signatures, and the redaction
// algorithm drops it like any other unlisted top-level key.
func normalizeRedaction(v gomatrixserverlib.RoomVersion, t *template) error {
	var content map[string]json.RawMessage
	if err := json.Unmarshal(t.Content, &content); err != nil {
		return fmt.Errorf("%w: redaction content is not a JSON object", ErrBadRequest)
	}
	target := t.Redacts
	if target == "" {
		_ = json.Unmarshal(content["redacts"], &target)
	}
	if target == "" {
		return fmt.Errorf("%w: a redaction needs the ID of the event it redacts", ErrBadRequest)
	}
	if !redactsInContent(v) {
		t.Redacts = target
		return nil
	}
	t.Redacts = target
	content["redacts"], _ = json.Marshal(target)
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	t.Content = raw
	return nil
}

// redactedJSON returns an event's JSON after the room version's redaction
// algorithm.
func redactedJSON(ev gomatrixserverlib.PDU) ([]byte, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
	if err != nil {
		return nil, err
	}
	raw, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return nil, fmt.Errorf("redact %s: %w", ev.EventID(), err)
	}
	return gomatrixserverlib.EnforcedCanonicalJSON(raw, ev.Version())
}

// canRedactOthers reports whether sender's power level in st reaches the
// redact level.
func (s *Service) canRedactOthers(ctx context.Context, q *store.Queries, st stateMap, sender string) (bool, error) {
	pdus, err := s.stateEventsFor(ctx, q, st, []gomatrixserverlib.StateKeyTuple{
		{EventType: spec.MRoomCreate, StateKey: ""}, {EventType: spec.MRoomPowerLevels, StateKey: ""},
	})
	if err != nil {
		return false, err
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return false, err
	}
	create, err := provider.Create()
	if err != nil || create == nil {
		return false, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(create.Version())
	if err != nil {
		return false, err
	}
	if verImpl.PrivilegedCreators() && slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create), sender) {
		return true, nil
	}
	pl, err := gomatrixserverlib.NewPowerLevelContentFromAuthEvents(provider, string(create.SenderID()))
	if err != nil {
		return false, err
	}
	return pl.UserLevel(spec.SenderID(sender)) >= pl.Redact, nil
}

// redactionApplies is the "handling redactions" check: same server as the
// target's sender, or the redact power level in the state before the
// redaction.
func (s *Service) redactionApplies(ctx context.Context, q *store.Queries, redaction gomatrixserverlib.PDU, before stateMap, target gomatrixserverlib.PDU) (bool, error) {
	rs, ts := redaction.SenderID().ToUserID(), target.SenderID().ToUserID()
	if rs != nil && ts != nil && rs.Domain() == ts.Domain() {
		return true, nil
	}
	return s.canRedactOthers(ctx, q, before, string(redaction.SenderID()))
}

// checkLocalRedaction refuses a local user's redaction of another user's
// event without the redact power level. Unknown targets are let through:
// the redaction is stored and waits for its target.
func (s *Service) checkLocalRedaction(ctx context.Context, w *writeTx, room store.Room, sender string, t template) error {
	target := t.Redacts
	if target == "" {
		var c struct {
			Redacts string `json:"redacts"`
		}
		_ = json.Unmarshal(t.Content, &c)
		target = c.Redacts
	}
	found, err := s.eventsByID(ctx, w.Queries, []string{target})
	if err != nil {
		return err
	}
	e, ok := found[target]
	if !ok || e.RoomNID != room.NID || string(e.pdu.SenderID()) == sender {
		return nil
	}
	current, err := s.loadState(ctx, w.Queries, room.SnapshotNID)
	if err != nil {
		return err
	}
	ok, err = s.canRedactOthers(ctx, w.Queries, current.state, sender)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: redacting another user's event needs the redact power level", ErrForbidden)
	}
	return nil
}

// recordRedaction runs after an accepted redaction is inserted: it stores
// the redaction and, when the target is known and the redaction applies,
// replaces the target by its redacted form.
func (s *Service) recordRedaction(ctx context.Context, w *writeTx, room store.Room, ev gomatrixserverlib.PDU, nid int64, before stateMap) error {
	targetID := redactsOf(ev)
	if targetID == "" {
		return nil
	}
	r := store.Redaction{RedactionNID: nid, RoomNID: room.NID, TargetEventID: targetID}
	found, err := s.eventsByID(ctx, w.Queries, []string{targetID})
	if err != nil {
		return err
	}
	if t, ok := found[targetID]; ok && t.RoomNID == room.NID && !t.Rejected {
		ok, err := s.redactionApplies(ctx, w.Queries, ev, before, t.pdu)
		if err != nil {
			return err
		}
		if ok {
			raw, err := redactedJSON(t.pdu)
			if err != nil {
				return err
			}
			if err := w.ReplaceEventJSON(ctx, t.NID, raw); err != nil {
				return err
			}
			tnid := t.NID
			w.afterTx = append(w.afterTx, func() { s.forgetEvent(tnid) })
			r.Applied = true
		}
	}
	return w.InsertRedaction(ctx, r)
}

// redactIfPending returns the JSON to store for an event about to be
// stored: its redacted form when an earlier redaction waits for it and
// applies, otherwise its own JSON.
// pending are the redactions that target ev (store.LookupInput).
func (s *Service) redactIfPending(ctx context.Context, w *writeTx, room store.Room, ev gomatrixserverlib.PDU, pending []store.Redaction) ([]byte, error) {
	if len(pending) == 0 {
		return ev.JSON(), nil
	}
	for _, r := range pending {
		if r.RoomNID != room.NID {
			continue
		}
		reds, err := s.loadEvents(ctx, w.Queries, []int64{r.RedactionNID})
		if err != nil {
			return nil, err
		}
		red := reds[r.RedactionNID]
		if red.StateBefore == nil {
			continue
		}
		before, err := s.loadState(ctx, w.Queries, *red.StateBefore)
		if err != nil {
			return nil, err
		}
		ok, err := s.redactionApplies(ctx, w.Queries, red.pdu, before.state, ev)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if err := w.MarkRedactionApplied(ctx, r.RedactionNID); err != nil {
			return nil, err
		}
		return redactedJSON(ev)
	}
	return ev.JSON(), nil
}
