package fedsender

import (
	"context"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Backfill: history before the earliest events this server has, asked of
// the servers in the room (in turn, until one answers) and input as
// BACKFILL. The oldest events of an answer name prev_events this server
// does not have: for those the state before them is fetched (/state) and
// input as outliers, and the event is input with that state.

const (
	defaultBackfillLimit = 50
	maxBackfillLimit     = 100
	// maxStateFetches bounds the /state requests of one backfill.
	maxStateFetches = 5
)

func (s *Service) backfill(ctx context.Context, req *fedsenderv1.BackfillRequest) (*fedsenderv1.BackfillResponse, error) {
	roomID, err := spec.NewRoomID(req.GetRoomId())
	if err != nil {
		return nil, fmt.Errorf("%w: room ID %q", ErrBadRequest, req.GetRoomId())
	}
	if len(req.GetEventIds()) == 0 {
		return nil, fmt.Errorf("%w: no event to backfill from", ErrBadRequest)
	}
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = defaultBackfillLimit
	}
	limit = min(limit, maxBackfillLimit)
	info, err := s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: roomID.String()})
	if err != nil {
		return nil, fmt.Errorf("QueryRoomInfo: %w", err)
	}
	if !info.GetRoomExists() {
		return nil, fmt.Errorf("%w: room %s is unknown here", ErrUnknownRoom, roomID)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(info.GetRoomVersion()))
	if err != nil {
		return nil, err
	}
	servers := s.serverList(req.GetServerNames())
	if len(req.GetServerNames()) == 0 {
		resp, err := s.rooms.QueryRoomServers(ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID.String()})
		if err != nil {
			return nil, fmt.Errorf("QueryRoomServers: %w", err)
		}
		servers = s.serverList(resp.GetServerNames())
	}
	if len(servers) == 0 {
		return nil, ErrNoServers
	}
	fc, _, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, server := range servers {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		txn, err := fc.Backfill(rctx, s.serverName, spec.ServerName(server), roomID.String(), limit, req.GetEventIds())
		cancel()
		if err != nil {
			errs = append(errs, remoteErr(ctx, server, err))
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		s.sender.answered(server)
		var events []gomatrixserverlib.PDU
		for _, raw := range txn.PDUs {
			ev, err := verImpl.NewEventFromUntrustedJSON(raw)
			if err != nil || ev.RoomID().String() != roomID.String() {
				s.log.Info("backfill: dropping an event that does not parse for the room", zap.String("server", server), zap.Error(err))
				continue
			}
			events = append(events, ev)
			if len(events) == maxBackfillLimit {
				break
			}
		}
		resp := &fedsenderv1.BackfillResponse{ServerName: server, Received: int32(len(txn.PDUs))}
		if len(events) > 0 {
			if resp.EventIds, err = s.inputBackfill(ctx, fc, spec.ServerName(server), roomID.String(), verImpl, events); err != nil {
				return nil, err
			}
		}
		resp.NotStored = resp.Received - int32(len(resp.EventIds))
		return resp, nil
	}
	return nil, bestError(errs)
}

// inputBackfill inputs the events as BACKFILL and returns those stored.
func (s *Service) inputBackfill(ctx context.Context, fc fclient.FederationClient, server spec.ServerName, roomID string,
	verImpl gomatrixserverlib.IRoomVersion, events []gomatrixserverlib.PDU) ([]string, error) {
	version := string(verImpl.Version())
	// input inputs evs in one call; the first gets stateIDs as the state
	// before it when they are given (the others' state follows from
	// their prev_events). One call is one batch the room-server publishes
	// newest first, which is what places the events in order in the
	// consumers' copies (each batch goes before the room's earliest event).
	input := func(evs []gomatrixserverlib.PDU, kind roomserverv1.InputKind, stateIDs []string) ([]*roomserverv1.InputEventResult, error) {
		req := &roomserverv1.InputEventsRequest{}
		for i, ev := range evs {
			in := &roomserverv1.InputEvent{RoomVersion: version, EventJson: ev.JSON(), Kind: kind}
			if i == 0 && stateIDs != nil {
				in.HasState, in.StateEventIds = true, stateIDs
			}
			req.Events = append(req.Events, in)
		}
		resp, err := s.rooms.InputEvents(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("InputEvents: %w", err)
		}
		return resp.GetResults(), nil
	}
	var storedIDs []string
	pending := events
	for fetches := 0; len(pending) > 0; {
		results, err := input(pending, roomserverv1.InputKind_INPUT_KIND_BACKFILL, nil)
		if err != nil {
			return nil, err
		}
		var missing []gomatrixserverlib.PDU
		for i, r := range results {
			switch {
			case stored(r.GetStatus()):
				storedIDs = append(storedIDs, r.GetEventId())
			case r.GetStatus() == roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS:
				missing = append(missing, pending[i])
			default:
				s.log.Info("backfill: the room-server did not take an event", logging.EventID(r.GetEventId()),
					zap.String("status", r.GetStatus().String()), zap.String("reason", r.GetReason()))
			}
		}
		if len(missing) == 0 || fetches >= maxStateFetches {
			break
		}
		// The oldest event still missing something: fetch the state
		// before it and input it with that state, together with the rest
		// (in one batch, so they are published in order).
		slices.SortFunc(missing, func(a, b gomatrixserverlib.PDU) int { return int(a.Depth() - b.Depth()) })
		oldest := missing[0]
		fetches++
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		st, err := fc.LookupState(rctx, s.serverName, server, roomID, oldest.EventID(), verImpl.Version())
		cancel()
		if err != nil {
			s.log.Info("backfill: /state failed", zap.String("server", string(server)), logging.EventID(oldest.EventID()), zap.Error(err))
			break
		}
		state := st.GetStateEvents().UntrustedEvents(verImpl.Version())
		auth := st.GetAuthEvents().UntrustedEvents(verImpl.Version())
		var stateIDs []string
		for _, ev := range state {
			stateIDs = append(stateIDs, ev.EventID())
		}
		if _, err := input(slices.Concat(auth, state), roomserverv1.InputKind_INPUT_KIND_OUTLIER, nil); err != nil {
			return nil, err
		}
		if stateIDs == nil {
			stateIDs = []string{}
		}
		res, err := input(missing, roomserverv1.InputKind_INPUT_KIND_BACKFILL, stateIDs)
		if err != nil {
			return nil, err
		}
		if len(res) != len(missing) || !stored(res[0].GetStatus()) {
			s.log.Info("backfill: the room-server did not take an event with the state before it", logging.EventID(oldest.EventID()),
				zap.String("result", describe(res)))
			break
		}
		pending = nil
		for i, r := range res {
			switch {
			case stored(r.GetStatus()):
				storedIDs = append(storedIDs, r.GetEventId())
			case r.GetStatus() == roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS:
				pending = append(pending, missing[i])
			default:
				s.log.Info("backfill: the room-server did not take an event", logging.EventID(r.GetEventId()),
					zap.String("status", r.GetStatus().String()), zap.String("reason", r.GetReason()))
			}
		}
	}
	return storedIDs, nil
}
