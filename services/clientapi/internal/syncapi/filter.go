package syncapi

import (
	"context"
	"encoding/json"
	"strings"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// How /sync applies a filter (filter.go parses it):
//
//   - room.rooms, room.not_rooms and room.include_leave choose the rooms
//     (readSync);
//   - room.timeline (limit, types, senders, rooms, contains_url, ...) and
//     the ignored users choose the timeline events before the limit is
//     counted (readTimelines): filtered events do not use up the limit;
//   - room.state.lazy_load_members and include_redundant_members choose
//     the member events of the state (lazy.go);
//   - everything else works on the built response (applyFilter): the
//     state, ephemeral and account data filters per room, the top-level
//     presence and account_data filters, event_fields and event_format.

// timelineKeep is the predicate for timeline events: the timeline filter
// and the user's ignored users (whose state events are still shown, as
// the spec requires). nil when nothing is filtered.
func timelineKeep(f clientevent.Filter, ignored map[string]bool) func(store.StoredEvent) bool {
	var tf *clientevent.RoomEventFilter
	if f.Room != nil && f.Room.Timeline.Restricts() {
		tf = f.Room.Timeline
	}
	if tf == nil && len(ignored) == 0 {
		return nil
	}
	return func(e store.StoredEvent) bool {
		if ignored[e.Sender] && e.StateKey == nil {
			return false
		}
		return tf == nil || (tf.AllowsRoomID(e.RoomID) && tf.Allows(e))
	}
}

// readTimelines is Timelines with keep applied before the limit is
// counted: when filtered events leave a timeline short, older events are
// read (up to three rounds, as Synapse does), and the timeline is limited
// if events remain before what it holds.
func readTimelines(ctx context.Context, rd store.Reader, ranges []store.RoomRange, limit int, keep func(store.StoredEvent) bool) (map[string]store.Timeline, error) {
	if keep == nil {
		return rd.Timelines(ctx, ranges, limit)
	}
	out := make(map[string]store.Timeline, len(ranges))
	pending := ranges
	for round := 0; len(pending) > 0; round++ {
		got, err := rd.Timelines(ctx, pending, limit)
		if err != nil {
			return nil, err
		}
		var next []store.RoomRange
		for _, rr := range pending {
			tl := got[rr.RoomID]
			var kept []store.StoredEvent
			for _, e := range tl.Events {
				if keep(e) {
					kept = append(kept, e)
				}
			}
			acc := out[rr.RoomID]
			acc.Events = append(kept, acc.Events...)
			acc.Limited = tl.Limited
			switch {
			case len(acc.Events) >= limit:
				acc.Limited = acc.Limited || len(acc.Events) > limit
				acc.Events = acc.Events[len(acc.Events)-limit:]
			case tl.Limited && len(tl.Events) > 0 && round < 2:
				next = append(next, store.RoomRange{RoomID: rr.RoomID, After: rr.After, Upto: tl.Events[0].Pos - 1})
			}
			out[rr.RoomID] = acc
		}
		pending = next
	}
	return out, nil
}

// applyFilter applies the parts of the filter that work on the built
// response; see the comment at the top of this file.
func (s *Service) applyFilter(ctx context.Context, f clientevent.Filter, resp *syncResponse) error {
	f.Presence.FilterList(&resp.Presence)
	f.AccountData.FilterList(&resp.AccountData)
	if rf := f.Room; rf != nil {
		for roomID, jr := range resp.Rooms.Join {
			rf.State.FilterList(roomID, &jr.State)
			rf.Ephemeral.FilterList(roomID, &jr.Ephemeral)
			rf.AccountData.FilterList(roomID, &jr.AccountData)
		}
		for roomID, lr := range resp.Rooms.Leave {
			rf.State.FilterList(roomID, &lr.State)
			rf.AccountData.FilterList(roomID, &lr.AccountData)
		}
	}
	if f.EventFormat == "federation" {
		if err := s.federationFormat(ctx, resp); err != nil {
			return err
		}
	}
	if f.EventFields != nil {
		paths := make([][]string, len(f.EventFields))
		for i, p := range f.EventFields {
			paths[i] = splitFieldPath(p)
		}
		roomEvents(resp, func(raw json.RawMessage) json.RawMessage { return onlyFields(raw, paths) })
	}
	return nil
}

// roomEvents rewrites every timeline and state event of the response.
func roomEvents(resp *syncResponse, fn func(json.RawMessage) json.RawMessage) {
	each := func(list []json.RawMessage) {
		for i, raw := range list {
			list[i] = fn(raw)
		}
	}
	for _, jr := range resp.Rooms.Join {
		each(jr.State.Events)
		each(jr.Timeline.Events)
	}
	for _, lr := range resp.Rooms.Leave {
		each(lr.State.Events)
		each(lr.Timeline.Events)
	}
}

// federationFormat replaces timeline and state events with the events as
// federation carries them (event_format "federation"), read from the
// room-server in one call.
func (s *Service) federationFormat(ctx context.Context, resp *syncResponse) error {
	var ids []string
	roomEvents(resp, func(raw json.RawMessage) json.RawMessage {
		var e struct {
			EventID string `json:"event_id"`
		}
		if json.Unmarshal(raw, &e) == nil && e.EventID != "" {
			ids = append(ids, e.EventID)
		}
		return raw
	})
	if len(ids) == 0 {
		return nil
	}
	out, err := s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: ids})
	if err != nil {
		return s.fromGRPC(ctx, "QueryEvents", err, nil)
	}
	pdus := make(map[string]json.RawMessage, len(out.GetEvents()))
	for _, ev := range out.GetEvents() {
		pdus[ev.GetEventId()] = ev.GetEventJson()
	}
	roomEvents(resp, func(raw json.RawMessage) json.RawMessage {
		var e struct {
			EventID string `json:"event_id"`
		}
		if json.Unmarshal(raw, &e) == nil {
			if pdu, ok := pdus[e.EventID]; ok {
				return pdu
			}
		}
		return raw
	})
	return nil
}

// splitFieldPath splits an event_fields entry on dots; "\." is a literal
// dot and "\\" a backslash.
func splitFieldPath(p string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '\\' && i+1 < len(p) && (p[i+1] == '.' || p[i+1] == '\\'):
			cur.WriteByte(p[i+1])
			i++
		case p[i] == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(p[i])
		}
	}
	return append(parts, cur.String())
}

// onlyFields keeps the given field paths of an event (event_fields).
func onlyFields(raw json.RawMessage, paths [][]string) json.RawMessage {
	var src map[string]json.RawMessage
	if json.Unmarshal(raw, &src) != nil {
		return raw
	}
	dst := map[string]any{}
	for _, p := range paths {
		copyField(src, dst, p)
	}
	out, err := json.Marshal(dst)
	if err != nil {
		return raw
	}
	return out
}

// copyField copies src's value at path into dst, creating the objects on
// the way.
func copyField(src map[string]json.RawMessage, dst map[string]any, path []string) {
	v, ok := src[path[0]]
	if !ok {
		return
	}
	if len(path) == 1 {
		dst[path[0]] = v
		return
	}
	var inner map[string]json.RawMessage
	if json.Unmarshal(v, &inner) != nil {
		return
	}
	var sub map[string]any
	switch have := dst[path[0]].(type) {
	case json.RawMessage:
		return // a shorter path already copied the whole value
	case map[string]any:
		sub = have
	default:
		sub = map[string]any{}
	}
	copyField(inner, sub, path[1:])
	if len(sub) > 0 {
		dst[path[0]] = sub
	}
}
