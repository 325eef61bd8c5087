package fedreceiver

// Filling a gap before a PDU the room-server cannot place (MISSING_EVENTS):
//
//  1. /get_missing_events from the sending server, between the room's
//     forward extremities and the PDU (limit missing_events_limit,
//     min_depth the lowest extremity's depth); what comes back is input
//     oldest first;
//  2. when a gap remains, the state before the PDU: /state_ids at its one
//     unknown prev event (plus that event itself, fetched with /event),
//     or at the PDU when several prev events are unknown; the state and
//     auth events this server lacks come from /event (a few) or /state
//     (many) and are input as outliers, chains still incomplete through
//     /event_auth; then the PDU is input as NEW with that state.
//
// Every request is bounded by fetch_timeout, the whole by gap_budget, and
// the amount by missing_events_limit and max_state_fetch. Whatever the
// remote answers is only input after the room-server's own checks; an
// event whose ID is not the one asked for is dropped.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// gap is one PDU's gap being filled.
type gap struct {
	s       *Service
	origin  spec.ServerName
	verImpl gomatrixserverlib.IRoomVersion
	ev      gomatrixserverlib.PDU
	raw     []byte
	fed     fclient.FederationClient
}

// eventsByFetch is the most events fetched one by one (/event) before
// /state is asked for the whole state instead.
const eventsByFetch = 20

// fetchConcurrency bounds parallel /event requests.
const fetchConcurrency = 8

// errGap is a gap the remote server's answers could not fill.
var errGap = errors.New("gap not filled")

func (g *gap) roomID() string { return g.ev.RoomID().String() }

// fill runs both steps and returns the PDU's last input result.
func (g *gap) fill(ctx context.Context) (*roomserverv1.InputEventResult, error) {
	fed, err := g.s.client.Federation(ctx)
	if err != nil {
		return nil, err
	}
	g.fed = fed
	if err := g.missingEvents(ctx); err != nil {
		if isPeerDown(err) {
			return nil, err
		}
		g.s.log.Debug("get_missing_events", zap.String("origin", string(g.origin)), zap.Error(err))
	}
	res, err := g.s.inputNew(ctx, g.verImpl, g.raw, g.roomID(), nil, false)
	if err != nil || res.GetStatus() != roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS {
		return res, err
	}
	return g.withState(ctx)
}

// fetchCtx bounds one request to the remote server.
func (g *gap) fetchCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, g.s.cfg.FetchTimeout)
}

// parse checks a fetched event: it parses for the room's version, is of
// this room and, when want is set, has that ID.
func (g *gap) parse(raw []byte, want string) (gomatrixserverlib.PDU, error) {
	ev, err := parsePDU(g.verImpl, raw)
	if err != nil {
		return nil, err
	}
	if ev.RoomID().String() != g.roomID() {
		return nil, fmt.Errorf("event %s is of another room", ev.EventID())
	}
	if want != "" && ev.EventID() != want {
		return nil, fmt.Errorf("asked for %s, got %s", want, ev.EventID())
	}
	return ev, nil
}

// missingEvents is step 1.
func (g *gap) missingEvents(ctx context.Context) error {
	info, err := g.s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: g.roomID()})
	if err != nil {
		return err
	}
	extremities := info.GetForwardExtremities()
	minDepth := int64(0)
	if known, err := g.s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: extremities}); err == nil {
		for i, e := range known.GetEvents() {
			var d struct {
				Depth int64 `json:"depth"`
			}
			if json.Unmarshal(e.GetEventJson(), &d) == nil && (i == 0 || d.Depth < minDepth) {
				minDepth = d.Depth
			}
		}
	}
	fctx, cancel := g.fetchCtx(ctx)
	defer cancel()
	resp, err := g.fed.LookupMissingEvents(fctx, g.s.server, g.origin, g.roomID(), fclient.MissingEvents{
		Limit: g.s.cfg.MissingEventsLimit, MinDepth: int(minDepth),
		EarliestEvents: nonNilStrings(extremities), LatestEvents: []string{g.ev.EventID()},
	}, g.verImpl.Version())
	if err != nil {
		return fmt.Errorf("get_missing_events from %s: %w", g.origin, err)
	}
	type fetched struct {
		ev  gomatrixserverlib.PDU
		raw []byte
	}
	var evs []fetched
	seen := map[string]bool{g.ev.EventID(): true}
	for i, raw := range resp.Events {
		if i >= g.s.cfg.MissingEventsLimit {
			break // more than asked for
		}
		ev, err := g.parse(raw, "")
		if err != nil || seen[ev.EventID()] {
			continue
		}
		seen[ev.EventID()] = true
		evs = append(evs, fetched{ev, raw})
	}
	slices.SortStableFunc(evs, func(a, b fetched) int {
		if a.ev.Depth() != b.ev.Depth() {
			if a.ev.Depth() < b.ev.Depth() {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ev.EventID(), b.ev.EventID())
	})
	for _, f := range evs {
		res, err := g.s.inputNew(ctx, g.verImpl, f.raw, g.roomID(), nil, false)
		if err != nil {
			return err
		}
		if res.GetStatus() == roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS {
			break // the gap goes back further than what came
		}
	}
	return nil
}

// known returns the IDs among ids that the room-server holds for this
// room.
func (g *gap) known(ctx context.Context, ids []string) (map[string]*roomserverv1.Event, error) {
	out := map[string]*roomserverv1.Event{}
	for chunk := range slices.Chunk(ids, 1000) {
		resp, err := g.s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: chunk})
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEvents() {
			if e.GetRoomId() == g.roomID() {
				out[e.GetEventId()] = e
			}
		}
	}
	return out, nil
}

// fetchEvent gets one event with /event.
func (g *gap) fetchEvent(ctx context.Context, id string) (gomatrixserverlib.PDU, []byte, error) {
	fctx, cancel := g.fetchCtx(ctx)
	defer cancel()
	txn, err := g.fed.GetEvent(fctx, g.s.server, g.origin, id)
	if err != nil {
		return nil, nil, fmt.Errorf("/event %s from %s: %w", id, g.origin, err)
	}
	if len(txn.PDUs) != 1 {
		return nil, nil, fmt.Errorf("/event %s from %s: %d PDUs", id, g.origin, len(txn.PDUs))
	}
	ev, err := g.parse(txn.PDUs[0], id)
	if err != nil {
		return nil, nil, fmt.Errorf("/event %s from %s: %w", id, g.origin, err)
	}
	return ev, txn.PDUs[0], nil
}

// withState is step 2.
func (g *gap) withState(ctx context.Context) (*roomserverv1.InputEventResult, error) {
	prevs, err := g.known(ctx, g.ev.PrevEventIDs())
	if err != nil {
		return nil, err
	}
	var unknown []string
	for _, p := range g.ev.PrevEventIDs() {
		if prevs[p] == nil {
			unknown = append(unknown, p)
		}
	}
	at := g.ev.EventID()
	var atEvent gomatrixserverlib.PDU
	var atRaw []byte
	if len(unknown) == 1 {
		at = unknown[0]
		if atEvent, atRaw, err = g.fetchEvent(ctx, at); err != nil {
			return nil, fmt.Errorf("%w: %v", errGap, err)
		}
	}
	fctx, cancel := g.fetchCtx(ctx)
	ids, err := g.fed.LookupStateIDs(fctx, g.s.server, g.origin, g.roomID(), at)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: /state_ids from %s: %v", errGap, g.origin, err)
	}
	max := g.s.cfg.MaxStateFetch
	if len(ids.StateEventIDs) > max || len(ids.AuthEventIDs) > max {
		return nil, fmt.Errorf("%w: /state_ids from %s names more than %d events", errGap, g.origin, max)
	}
	needed := map[string]bool{}
	for _, id := range slices.Concat(ids.StateEventIDs, ids.AuthEventIDs) {
		if !validEventID(id) {
			return nil, fmt.Errorf("%w: /state_ids from %s names an invalid event ID", errGap, g.origin)
		}
		needed[id] = true
	}
	if atEvent != nil {
		for _, id := range atEvent.AuthEventIDs() {
			needed[id] = true
		}
	}
	have, err := g.known(ctx, mapKeys(needed))
	if err != nil {
		return nil, err
	}
	var missing []string
	for id := range needed {
		if have[id] == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > max {
		return nil, fmt.Errorf("%w: %d state events missing, more than %d", errGap, len(missing), max)
	}
	fetched, err := g.fetchEvents(ctx, at, missing)
	if err != nil {
		return nil, err
	}
	if atEvent != nil {
		fetched = append(fetched, atRaw)
	}
	if err := g.inputOutliers(ctx, fetched); err != nil {
		return nil, err
	}
	state, err := g.stateAfter(ctx, ids.StateEventIDs, atEvent)
	if err != nil {
		return nil, err
	}
	res, err := g.s.inputNew(ctx, g.verImpl, g.raw, g.roomID(), state, true)
	if err != nil || res.GetStatus() != roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS {
		return res, err
	}
	// Its own auth events are not in that state: fetch its auth chain.
	if err := g.authChain(ctx, g.ev.EventID()); err != nil {
		return nil, err
	}
	return g.s.inputNew(ctx, g.verImpl, g.raw, g.roomID(), state, true)
}

// fetchEvents gets the missing events: one by one with /event when they
// are few, else the whole state at `at` with /state (taking the ones
// missing, then /event for any it lacked). Events that do not check out
// are left out (the input then reports them missing).
func (g *gap) fetchEvents(ctx context.Context, at string, missing []string) ([][]byte, error) {
	want := map[string]bool{}
	for _, id := range missing {
		want[id] = true
	}
	var out [][]byte
	if len(missing) > eventsByFetch {
		fctx, cancel := g.fetchCtx(ctx)
		resp, err := g.fed.LookupState(fctx, g.s.server, g.origin, g.roomID(), at, g.verImpl.Version())
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: /state from %s: %v", errGap, g.origin, err)
		}
		for _, raw := range slices.Concat(resp.StateEvents, resp.AuthEvents) {
			ev, err := g.parse(raw, "")
			if err != nil || !want[ev.EventID()] {
				continue
			}
			delete(want, ev.EventID())
			out = append(out, raw)
		}
	}
	var mu sync.Mutex
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(fetchConcurrency)
	for id := range want {
		eg.Go(func() error {
			_, raw, err := g.fetchEvent(ectx, id)
			if err != nil {
				g.s.log.Debug("fetch event", zap.Error(err))
				return nil
			}
			mu.Lock()
			out = append(out, raw)
			mu.Unlock()
			return nil
		})
	}
	_ = eg.Wait()
	return out, nil
}

// inputOutliers inputs events as outliers (the room-server orders them by
// their auth events); those whose auth events are still unknown get their
// auth chain from /event_auth and are tried again once.
func (g *gap) inputOutliers(ctx context.Context, raws [][]byte) error {
	if len(raws) == 0 {
		return nil
	}
	res, err := g.outliers(ctx, raws)
	if err != nil {
		return err
	}
	var retry [][]byte
	for i, r := range res {
		if r.GetStatus() == roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS && len(retry) < 5 {
			if err := g.authChain(ctx, r.GetEventId()); err != nil {
				g.s.log.Debug("event_auth", zap.Error(err))
				continue
			}
			retry = append(retry, raws[i])
		}
	}
	if len(retry) > 0 {
		_, err = g.outliers(ctx, retry)
	}
	return err
}

func (g *gap) outliers(ctx context.Context, raws [][]byte) ([]*roomserverv1.InputEventResult, error) {
	req := &roomserverv1.InputEventsRequest{}
	for _, raw := range raws {
		req.Events = append(req.Events, &roomserverv1.InputEvent{RoomVersion: string(g.verImpl.Version()), EventJson: raw,
			Kind: roomserverv1.InputKind_INPUT_KIND_OUTLIER})
	}
	resp, err := g.s.rooms.InputEvents(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("InputEvents (outliers): %w", err)
	}
	if len(resp.GetResults()) != len(raws) {
		return nil, fmt.Errorf("InputEvents (outliers): %d results for %d events", len(resp.GetResults()), len(raws))
	}
	return resp.GetResults(), nil
}

// authChain fetches an event's auth chain with /event_auth and inputs the
// events this server lacks as outliers.
func (g *gap) authChain(ctx context.Context, eventID string) error {
	fctx, cancel := g.fetchCtx(ctx)
	resp, err := g.fed.GetEventAuth(fctx, g.s.server, g.origin, g.verImpl.Version(), g.roomID(), eventID)
	cancel()
	if err != nil {
		return fmt.Errorf("%w: /event_auth from %s: %v", errGap, g.origin, err)
	}
	if len(resp.AuthEvents) > g.s.cfg.MaxStateFetch {
		return fmt.Errorf("%w: /event_auth from %s: %d events", errGap, g.origin, len(resp.AuthEvents))
	}
	byID := map[string][]byte{}
	for _, raw := range resp.AuthEvents {
		if ev, err := g.parse(raw, ""); err == nil {
			byID[ev.EventID()] = raw
		}
	}
	have, err := g.known(ctx, mapKeys(byID))
	if err != nil {
		return err
	}
	var raws [][]byte
	for id, raw := range byID {
		if have[id] == nil {
			raws = append(raws, raw)
		}
	}
	if len(raws) == 0 {
		return nil
	}
	_, err = g.outliers(ctx, raws)
	return err
}

// stateAfter is the state before the PDU: the state IDs as given, or,
// when they are the state before its prev event atEvent, with atEvent in
// its place when it is a state event.
func (g *gap) stateAfter(ctx context.Context, stateIDs []string, atEvent gomatrixserverlib.PDU) ([]string, error) {
	if atEvent == nil || atEvent.StateKey() == nil {
		return stateIDs, nil
	}
	have, err := g.known(ctx, stateIDs)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(stateIDs)+1)
	for _, id := range stateIDs {
		e := have[id]
		if e != nil {
			var k struct {
				Type     string  `json:"type"`
				StateKey *string `json:"state_key"`
			}
			if json.Unmarshal(e.GetEventJson(), &k) == nil && k.StateKey != nil &&
				k.Type == atEvent.Type() && *k.StateKey == *atEvent.StateKey() {
				continue // replaced by atEvent
			}
		}
		out = append(out, id)
	}
	return append(out, atEvent.EventID()), nil
}

// validEventID: an event ID as the spec shapes them ('$' sigil, at most
// 255 bytes, text a store can hold).
func validEventID(id string) bool {
	return len(id) > 1 && len(id) <= 255 && id[0] == '$' && matrixhttp.CheckText(id) == nil
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
