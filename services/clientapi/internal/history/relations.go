package history

// Relations, threads and bundled aggregations. The consumer records each
// event's content."m.relates_to" in event_relations (a redaction removes
// it). Events served by /messages, /context, /event, /relations, /threads
// and /sync timelines carry unsigned."m.relations" with:
//
//   - m.thread: the latest reply, the number of replies, and whether the
//     user started or replied to the thread;
//   - m.reference: the IDs of the referencing events;
//   - m.replace: the most recent valid edit (v1.7 rules: same sender and
//     type, no state keys, the original not itself an edit, m.new_content
//     present; latest by origin_server_ts then event ID), not bundled when
//     the original is redacted. The original's content is left as it is.
//
// Only children the user may see (history visibility) are counted or
// bundled. latest_event carries its own aggregations (one level).

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"slices"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Bundles maps event IDs to their unsigned."m.relations" objects.
type Bundles map[string]map[string]any

// bundleFor computes the aggregations of events (all of one room or
// several) as seen by the device's user.
func (s *Service) bundleFor(ctx context.Context, rd store.Reader, dev *httpapi.Device, events []store.StoredEvent) (Bundles, error) {
	return s.aggregate(ctx, rd, dev, events, true)
}

// aggregate computes aggregations; nested also aggregates the children of
// each thread's latest event.
func (s *Service) aggregate(ctx context.Context, rd store.Reader, dev *httpapi.Device, events []store.StoredEvent, nested bool) (Bundles, error) {
	if len(events) == 0 {
		return Bundles{}, nil
	}
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.EventID
	}
	children, err := rd.Children(ctx, ids, clientevent.BundledRelTypes)
	if err != nil {
		return nil, err
	}
	return s.AggregateChildren(ctx, rd, dev, events, nested, children)
}

// aggregateChildren is aggregate with the events' children (of
// clientevent.BundledRelTypes) already read.
func (s *Service) AggregateChildren(ctx context.Context, rd store.Reader, dev *httpapi.Device, events []store.StoredEvent, nested bool, children []store.Child) (Bundles, error) {
	out := Bundles{}
	if len(children) == 0 {
		return out, nil
	}
	parents := make(map[string]store.StoredEvent, len(events))
	for _, e := range events {
		parents[e.EventID] = e
	}
	var rooms []string
	for _, c := range children {
		if !slices.Contains(rooms, c.Event.RoomID) {
			rooms = append(rooms, c.Event.RoomID)
		}
	}
	vf, err := s.newVisibilityFilter(ctx, rd, dev.UserID, rooms)
	if err != nil {
		return nil, err
	}
	// Events from ignored users do not count in aggregations (spec).
	ignored, err := clientevent.IgnoredUsers(ctx, rd, dev.UserID)
	if err != nil {
		return nil, err
	}
	type thread struct {
		count        int
		latest       store.StoredEvent
		participated bool
	}
	threads := map[string]*thread{}
	refs := map[string][]map[string]string{}
	edits := map[string]store.StoredEvent{}
	for _, c := range children {
		// An erased copy has no relation left to count.
		if !vf.canSee(c.Event) || vf.servedErased(c.Event) || ignored[c.Event.Sender] {
			continue
		}
		parent, ok := parents[c.ParentID]
		if !ok {
			continue // read for an event the caller left out
		}
		switch c.RelType {
		case clientevent.RelThread:
			th := threads[c.ParentID]
			if th == nil {
				th = &thread{participated: parent.Sender == dev.UserID}
				threads[c.ParentID] = th
			}
			th.count++
			th.latest = c.Event // children come oldest first
			th.participated = th.participated || c.Event.Sender == dev.UserID
		case clientevent.RelReference:
			refs[c.ParentID] = append(refs[c.ParentID], map[string]string{"event_id": c.Event.EventID})
		case clientevent.RelReplace:
			if validEdit(parent, c.Event) {
				if cur, ok := edits[c.ParentID]; !ok || newerEdit(c.Event, cur) {
					edits[c.ParentID] = c.Event
				}
			}
		}
	}
	get := func(id string) map[string]any {
		if out[id] == nil {
			out[id] = map[string]any{}
		}
		return out[id]
	}
	// A thread's latest event carries its own aggregations (edits,
	// references); thread replies cannot be thread roots, so this nests
	// once.
	latestBundles := Bundles{}
	if nested && len(threads) > 0 {
		var latestEvents []store.StoredEvent
		for _, th := range threads {
			latestEvents = append(latestEvents, th.latest)
		}
		if latestBundles, err = s.aggregate(ctx, rd, dev, latestEvents, false); err != nil {
			return nil, err
		}
	}
	for id, th := range threads {
		latest, err := latestBundles.Render(th.latest, dev, true)
		if err != nil {
			return nil, err
		}
		get(id)[clientevent.RelThread] = map[string]any{"latest_event": latest, "count": th.count, "current_user_participated": th.participated}
	}
	for id, chunk := range refs {
		get(id)[clientevent.RelReference] = map[string]any{"chunk": chunk}
	}
	for id, edit := range edits {
		raw, err := clientevent.RenderFor(edit, dev, true)
		if err != nil {
			return nil, err
		}
		get(id)[clientevent.RelReplace] = raw
	}
	return out, nil
}

// eventFields are the parts of a stored client event the edit rules read.
type eventFields struct {
	OriginServerTS int64 `json:"origin_server_ts"`
	Content        struct {
		NewContent json.RawMessage `json:"m.new_content"`
		RelatesTo  *struct {
			RelType string `json:"rel_type"`
		} `json:"m.relates_to"`
	} `json:"content"`
	Unsigned struct {
		RedactedBecause json.RawMessage `json:"redacted_because"`
	} `json:"unsigned"`
}

func fieldsOf(e store.StoredEvent) eventFields {
	var f eventFields
	_ = json.Unmarshal(e.JSON, &f)
	return f
}

// validEdit applies the spec's validity rules for replacement events.
func validEdit(original, edit store.StoredEvent) bool {
	if original.EventID == "" || original.Sender != edit.Sender || original.Type != edit.Type ||
		original.StateKey != nil || edit.StateKey != nil {
		return false
	}
	of, ef := fieldsOf(original), fieldsOf(edit)
	if len(of.Unsigned.RedactedBecause) > 0 { // edits of redacted events are not bundled
		return false
	}
	if of.Content.RelatesTo != nil && of.Content.RelatesTo.RelType == clientevent.RelReplace {
		return false
	}
	return len(ef.Content.NewContent) > 0 && string(ef.Content.NewContent) != "null"
}

// newerEdit orders edits by origin_server_ts, then event ID.
func newerEdit(a, b store.StoredEvent) bool {
	ta, tb := fieldsOf(a).OriginServerTS, fieldsOf(b).OriginServerTS
	if ta != tb {
		return ta > tb
	}
	return a.EventID > b.EventID
}

// render renders a stored event with its bundled aggregations.
func (b Bundles) Render(e store.StoredEvent, dev *httpapi.Device, withRoomID bool) (json.RawMessage, error) {
	raw, err := clientevent.RenderFor(e, dev, withRoomID)
	if err != nil || b[e.EventID] == nil {
		return raw, err
	}
	var ev map[string]json.RawMessage
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, err
	}
	unsigned := map[string]any{}
	if u := ev["unsigned"]; len(u) > 0 {
		_ = json.Unmarshal(u, &unsigned)
	}
	unsigned["m.relations"] = b[e.EventID]
	if ev["unsigned"], err = json.Marshal(unsigned); err != nil {
		return nil, err
	}
	return json.Marshal(ev)
}

// renderAll renders events with their aggregations.
func (s *Service) RenderAll(ctx context.Context, rd store.Reader, dev *httpapi.Device, events []store.StoredEvent, withRoomID bool) ([]json.RawMessage, error) {
	b, err := s.bundleFor(ctx, rd, dev, events)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, 0, len(events))
	for _, e := range events {
		raw, err := b.Render(e, dev, withRoomID)
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// relationsResponse is the body of GET /relations.
type relationsResponse struct {
	Chunk          []json.RawMessage `json:"chunk"`
	NextBatch      string            `json:"next_batch,omitempty"`
	PrevBatch      string            `json:"prev_batch,omitempty"`
	RecursionDepth int               `json:"recursion_depth,omitempty"`
}

// maxRelationsLimit caps the limit of /relations and /threads.
const maxRelationsLimit = 100

// relations is GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}
// [/{relType}[/{eventType}]]: the visible children of a visible event,
// paginated with the same tokens as /messages (dir defaults to b).
func (s *Service) relations(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, eventID, err := EventParams(r)
	if err != nil {
		return nil, err
	}
	q := store.RelationQuery{RoomID: roomID, ParentID: eventID, Dir: store.Backward, From: math.MaxInt64, To: -1}
	if q.RelType, err = httpapi.PathParam(r, "relType"); err != nil {
		return nil, err
	}
	if q.EventType, err = httpapi.PathParam(r, "eventType"); err != nil {
		return nil, err
	}
	query := r.URL.Query()
	switch query.Get("dir") {
	case "", "b":
	case "f":
		q.Dir, q.From = store.Forward, 0
	default:
		return nil, matrixhttp.InvalidParam("dir must be b or f")
	}
	if v := query.Get("from"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
		q.From = t.Pos
	}
	if v := query.Get("to"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid to token")
		}
		q.To = t.Pos
	}
	limit, err := httpapi.QueryInt(r, "limit", 50)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	q.Limit = int(min(limit, maxRelationsLimit))
	switch query.Get("recurse") {
	case "", "false":
	case "true":
		q.Recurse = true
	default:
		return nil, matrixhttp.InvalidParam("recurse must be true or false")
	}
	ctx := r.Context()
	var resp relationsResponse
	err = s.store.Snapshot(ctx, func(rd store.Reader) error {
		if _, err := s.VisibleEvent(ctx, rd, dev.UserID, roomID, eventID); err != nil {
			return err
		}
		page, err := rd.Relations(ctx, q)
		if err != nil {
			return err
		}
		visible, err := s.VisibleEvents(ctx, rd, dev.UserID, roomID, page.Events, clientevent.RoomEventFilter{})
		if err != nil {
			return err
		}
		if resp.Chunk, err = s.RenderAll(ctx, rd, dev, visible, true); err != nil {
			return err
		}
		if page.More && len(page.Events) > 0 {
			last := page.Events[len(page.Events)-1].Pos
			if q.Dir == store.Backward {
				last--
			}
			resp.NextBatch = clientevent.StreamToken{Pos: last}.String()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if q.Recurse {
		resp.RecursionDepth = store.MaxRelationDepth
	}
	return resp, nil
}

// threads is GET /_matrix/client/v1/rooms/{roomId}/threads: thread roots,
// most recently active first (include=all or participated).
func (s *Service) threads(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	query := r.URL.Query()
	participant := ""
	switch query.Get("include") {
	case "", "all":
	case "participated":
		participant = dev.UserID
	default:
		return nil, matrixhttp.InvalidParam("include must be all or participated")
	}
	before := int64(math.MaxInt64)
	if v := query.Get("from"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
		before = t.Pos
	}
	limit, err := httpapi.QueryInt(r, "limit", 50)
	if err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, matrixhttp.InvalidParam("limit must not be negative")
	}
	if _, err := s.AccessRoom(r, dev.UserID, roomID); err != nil {
		return nil, err
	}
	ctx := r.Context()
	resp := map[string]any{}
	err = s.store.Snapshot(ctx, func(rd store.Reader) error {
		roots, more, err := rd.ThreadRoots(ctx, roomID, participant, before, int(min(limit, maxRelationsLimit)))
		if err != nil {
			return err
		}
		events := make([]store.StoredEvent, len(roots))
		for i, tr := range roots {
			events[i] = tr.Event
		}
		visible, err := s.VisibleEvents(ctx, rd, dev.UserID, roomID, events, clientevent.RoomEventFilter{})
		if err != nil {
			return err
		}
		chunk, err := s.RenderAll(ctx, rd, dev, visible, true)
		if err != nil {
			return err
		}
		resp["chunk"] = chunk
		if more && len(roots) > 0 {
			resp["next_batch"] = clientevent.StreamToken{Pos: roots[len(roots)-1].LatestPos - 1}.String()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
