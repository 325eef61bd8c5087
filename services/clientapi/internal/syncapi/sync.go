package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

type timelineBatch struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch,omitempty"`
}

type roomSummary struct {
	Heroes  []string `json:"m.heroes,omitempty"`
	Joined  int      `json:"m.joined_member_count"`
	Invited int      `json:"m.invited_member_count"`
}

type joinedRoom struct {
	Summary             roomSummary           `json:"summary"`
	State               clientevent.EventList `json:"state"`
	Timeline            timelineBatch         `json:"timeline"`
	Ephemeral           clientevent.EventList `json:"ephemeral"`
	AccountData         clientevent.EventList `json:"account_data"`
	UnreadNotifications map[string]int        `json:"unread_notifications"`
	// UnreadThreadNotifications: per thread, when the filter asks (unread.go).
	UnreadThreadNotifications map[string]threadCounts `json:"unread_thread_notifications,omitempty"`
}

type invitedRoom struct {
	InviteState clientevent.EventList `json:"invite_state"`
}

type leftRoom struct {
	State       clientevent.EventList `json:"state"`
	Timeline    timelineBatch         `json:"timeline"`
	AccountData clientevent.EventList `json:"account_data"`
}

type syncRooms struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite"`
	Leave  map[string]*leftRoom    `json:"leave"`
	Knock  map[string]any          `json:"knock"`
}

type syncResponse struct {
	NextBatch   string                `json:"next_batch"`
	Rooms       syncRooms             `json:"rooms"`
	AccountData clientevent.EventList `json:"account_data"`
	Presence    clientevent.EventList `json:"presence"`
	ToDevice    clientevent.EventList `json:"to_device"`
	// The end-to-end encryption extensions (keys.go);
	// device_lists only in incremental syncs. Left out when the key-server
	// did not answer.
	DeviceLists                  *deviceLists     `json:"device_lists,omitempty"`
	DeviceOneTimeKeysCount       map[string]int64 `json:"device_one_time_keys_count,omitempty"`
	DeviceUnusedFallbackKeyTypes *[]string        `json:"device_unused_fallback_key_types,omitempty"`
}

type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

func (r *syncResponse) empty() bool {
	return len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 &&
		len(r.Rooms.Knock) == 0 && len(r.Presence.Events) == 0 && len(r.AccountData.Events) == 0 &&
		len(r.ToDevice.Events) == 0 && (r.DeviceLists == nil || len(r.DeviceLists.Changed)+len(r.DeviceLists.Left) == 0)
}

// syncOptions are the parsed /sync parameters.
type syncOptions struct {
	since     *clientevent.StreamToken
	fullState bool
	// withStreams: readSync also reads the account data changes and the
	// device's to-device messages after since's positions of those
	// streams (syncData.accountData, syncData.toDevice).
	withStreams bool
	limit       int
	filter      clientevent.Filter
}

// sync is GET /sync. Without since it is an initial sync; with since it
// returns what changed after that position, long-polling up to timeout
// when nothing did. Waiting is driven by the notifier (fed by the
// JetStream consumer), never by polling.
func (s *Service) sync(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := refuseAppserviceSender(dev); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	var opts syncOptions
	if v := q.Get("since"); v != "" {
		t, err := clientevent.ParseStreamToken(v)
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid since token")
		}
		opts.since = &t
	}
	switch q.Get("full_state") {
	case "", "false":
	case "true":
		opts.fullState = true
	default:
		return nil, matrixhttp.InvalidParam("full_state must be true or false")
	}
	switch q.Get("set_presence") {
	case "", "online", "offline", "unavailable":
	default:
		return nil, matrixhttp.InvalidParam("set_presence must be online, offline or unavailable")
	}
	timeoutMS, err := httpapi.QueryInt(r, "timeout", 0)
	if err != nil {
		return nil, err
	}
	timeout := min(time.Duration(max(timeoutMS, 0))*time.Millisecond, s.cfg.MaxTimeout)
	if opts.filter, err = s.syncFilterParam(r, dev); err != nil {
		return nil, err
	}
	opts.limit = s.cfg.DefaultTimelineLimit
	if l := opts.filter.TimelineLimit(); l != nil {
		opts.limit = min(*l, s.cfg.MaxTimelineLimit)
	}

	opts.withStreams = true
	ctx := r.Context()
	// Presence learns of the sync while the room events are read; the
	// ephemeral data read after both then includes the user's own change.
	active := make(chan struct{})
	go func() {
		defer close(active)
		s.markActive(ctx, dev.UserID, q.Get("set_presence"))
	}()
	wait := opts.since != nil && !opts.fullState && timeout > 0
	deadline := time.Now().Add(timeout)
	for {
		woken := s.notifier.WakeCount(dev.UserID)
		keys := s.keys.StartSync(ctx, dev, opts.since)
		resp, d, err := s.buildSync(ctx, dev, opts)
		<-active
		if err != nil {
			return nil, err
		}
		pos := d.pos
		epos, err := s.addEphemeral(ctx, dev, opts, resp, pos, d.memberships)
		if err != nil {
			return nil, err
		}
		apos, err := s.syncAccountData(ctx, dev.UserID, opts.since.AccountDataPos(), opts.since == nil, opts.filter, resp, d.accountData)
		if err != nil {
			return nil, err
		}
		dpos, err := s.syncToDevice(ctx, dev, opts.since.ToDevicePos(), resp, d.toDevice)
		if err != nil {
			return nil, err
		}
		kpos := s.syncDeviceKeys(ctx, dev, opts.since, resp, d, keys)
		if err := s.addUnreadCounts(ctx, dev.UserID, opts.filter, pos, resp, d.unread); err != nil {
			return nil, err
		}
		if err := s.applyFilter(ctx, opts.filter, resp); err != nil {
			return nil, err
		}
		resp.NextBatch = clientevent.StreamToken{Pos: pos, EPos: epos, APos: apos, DPos: dpos, KPos: kpos}.String()
		if !wait || !resp.empty() || !time.Now().Before(deadline) {
			return resp, nil
		}
		waitCtx, cancel := context.WithDeadline(ctx, deadline)
		s.notifier.WaitSync(waitCtx, dev.UserID, notifier.SyncCursor{Pos: pos, EPos: epos, Wakes: woken})
		cancel()
		if ctx.Err() != nil || s.notifier.IsClosed() {
			return resp, nil
		}
	}
}

// roomKind is how a room appears in a sync response.
type roomKind int

const (
	// kindFull: joined, with the full state before the timeline (initial
	// sync, newly joined, or full_state).
	kindFull roomKind = iota
	// kindIncremental: joined; state is the delta over a limited gap.
	kindIncremental
	// kindLeft: left or banned since the last sync.
	kindLeft
)

type syncRoom struct {
	kind roomKind
	rng  store.RoomRange
}

// syncData is everything read from one database snapshot.
type syncData struct {
	pos       int64
	rooms     []syncRoom
	timelines map[string]store.Timeline
	gaps      map[string][]store.StoredEvent
	current   map[string][]store.CurrentStateEvent // full state of kindFull rooms with empty timelines
	summaries map[string]store.RoomSummary
	// lazyState is the state of each joined room when members are lazily
	// loaded (lazy.go); nil otherwise.
	lazyState map[string][]json.RawMessage
	invites   map[string][]store.CurrentStateEvent // stripped state incl. the invite
	// memberships are the user's, as of pos.
	memberships []store.Membership
	// accountData and toDevice are set when syncOptions.withStreams asks.
	accountData *store.AccountDataChanges
	toDevice    *store.ToDeviceRead
	// children relate to the timelines' events (bundled aggregations).
	children []store.Child
	// unread are the unread counts of the joined rooms.
	unread *unreadRead
}

// buildSync computes one /sync response, and returns it with what it read
// (d.pos is the stream position it covers).
func (s *Service) buildSync(ctx context.Context, dev *httpapi.Device, opts syncOptions) (*syncResponse, syncData, error) {
	var d syncData
	err := s.store.Snapshot(ctx, func(rd store.Reader) error {
		var err error
		d, err = s.readSync(ctx, rd, dev, opts)
		return err
	})
	if err != nil {
		return nil, d, err
	}
	resp := &syncResponse{
		NextBatch: clientevent.StreamToken{Pos: d.pos}.String(),
		Rooms: syncRooms{
			Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{},
			Leave: map[string]*leftRoom{}, Knock: map[string]any{},
		},
		AccountData: clientevent.EmptyEvents(), Presence: clientevent.EmptyEvents(), ToDevice: clientevent.EmptyEvents(),
	}

	// Bundled aggregations (history.AggregateChildren) of every timeline event.
	var timelineEvents []store.StoredEvent
	for _, tl := range d.timelines {
		timelineEvents = append(timelineEvents, tl.Events...)
	}
	bundled, err := s.history.AggregateChildren(ctx, s.store.Reader(), dev, timelineEvents, true, d.children)
	if err != nil {
		return nil, d, err
	}

	// State before the timeline of kindFull rooms comes from the room-server.
	stateBefore, err := s.stateBefore(ctx, d)
	if err != nil {
		return nil, d, err
	}

	for _, sr := range d.rooms {
		roomID := sr.rng.RoomID
		tl := d.timelines[roomID]
		if sr.kind == kindIncremental && len(tl.Events) == 0 {
			continue
		}
		batch, err := renderTimeline(tl, dev, d.pos, bundled)
		if err != nil {
			return nil, d, err
		}
		state := clientevent.EmptyEvents()
		lazy, isLazy := d.lazyState[roomID]
		switch {
		case isLazy:
			state.Events = lazy
		case sr.kind == kindFull && len(tl.Events) > 0:
			state.Events = stateBefore[tl.Events[0].EventID]
		case sr.kind == kindFull:
			for _, e := range d.current[roomID] {
				state.Events = append(state.Events, json.RawMessage(e.JSON))
			}
		default:
			for _, e := range d.gaps[roomID] {
				state.Events = append(state.Events, json.RawMessage(e.JSON))
			}
		}
		if state.Events == nil {
			state.Events = []json.RawMessage{}
		}
		if sr.kind == kindLeft {
			resp.Rooms.Leave[roomID] = &leftRoom{State: state, Timeline: batch, AccountData: clientevent.EmptyEvents()}
			continue
		}
		resp.Rooms.Join[roomID] = &joinedRoom{
			Summary:             toSummary(d.summaries[roomID]),
			State:               state,
			Timeline:            batch,
			Ephemeral:           clientevent.EmptyEvents(),
			AccountData:         clientevent.EmptyEvents(),
			UnreadNotifications: map[string]int{},
		}
	}
	for roomID, events := range d.invites {
		list := clientevent.EmptyEvents()
		for _, e := range events {
			raw, err := clientevent.StrippedEvent(e.JSON)
			if err != nil {
				return nil, d, err
			}
			list.Events = append(list.Events, raw)
		}
		if isKnock(events, dev.UserID) {
			resp.Rooms.Knock[roomID] = &knockedRoom{KnockState: list}
			continue
		}
		resp.Rooms.Invite[roomID] = &invitedRoom{InviteState: list}
	}
	return resp, d, nil
}

// readSync reads what a sync response needs from one snapshot.
func (s *Service) readSync(ctx context.Context, rd store.Reader, dev *httpapi.Device, opts syncOptions) (syncData, error) {
	userID := dev.UserID
	d := syncData{
		gaps:      map[string][]store.StoredEvent{},
		current:   map[string][]store.CurrentStateEvent{},
		summaries: map[string]store.RoomSummary{},
		invites:   map[string][]store.CurrentStateEvent{},
	}
	// Round trip 1 (with the snapshot's BEGIN): position, memberships,
	// the ignore list, and the account data and to-device changes.
	var start store.SyncStart
	b := &store.Batch{}
	b.SyncStart(userID, clientevent.IgnoredUserListType, &start)
	if opts.withStreams {
		d.accountData, d.toDevice = &store.AccountDataChanges{}, &store.ToDeviceRead{}
		b.AccountDataChanges(userID, opts.since.AccountDataPos(), d.accountData)
		b.ToDevice(userID, dev.DeviceID, opts.since.ToDevicePos(), toDeviceSyncLimit, d.toDevice)
	}
	if err := rd.Send(ctx, b); err != nil {
		return d, err
	}
	d.pos, d.memberships = start.Pos, start.Memberships
	incremental := opts.since != nil
	var since int64
	if incremental {
		since = opts.since.Pos
	}
	var quiet []string // joined before since: included only if they have new events
	var invited []store.Membership
	for _, m := range start.Memberships {
		if !opts.filter.AllowsRoom(m.RoomID) {
			continue
		}
		switch m.Membership {
		case store.MembershipJoin:
			switch {
			case !incremental || m.JoinPos > since:
				d.rooms = append(d.rooms, syncRoom{kind: kindFull, rng: store.RoomRange{RoomID: m.RoomID, After: 0, Upto: d.pos}})
			case opts.fullState:
				d.rooms = append(d.rooms, syncRoom{kind: kindFull, rng: store.RoomRange{RoomID: m.RoomID, After: since, Upto: d.pos}})
			default:
				quiet = append(quiet, m.RoomID)
			}
		case store.MembershipInvite, store.MembershipKnock:
			// Knocks are read like invites and shown under rooms.knock.
			if !incremental || m.Pos > since {
				invited = append(invited, m)
			}
		case store.MembershipLeave, store.MembershipBan:
			// Rooms left since the last sync always; rooms left earlier
			// only with include_leave, in initial and full_state syncs.
			include := (incremental && m.Pos > since) || ((!incremental || opts.fullState) && opts.filter.IncludeLeave() && m.JoinPos > 0)
			if !include {
				continue
			}
			rng := store.RoomRange{RoomID: m.RoomID, After: m.Pos - 1, Upto: m.Pos}
			if m.Prev == store.MembershipJoin {
				// The user saw the room until the leave: show what they
				// missed since the last sync (or since they joined).
				rng.After = max(since, m.JoinPos-1)
			}
			d.rooms = append(d.rooms, syncRoom{kind: kindLeft, rng: rng})
		}
	}

	// Round trip 2: the timelines, the quiet rooms' included (one with
	// no new events gets an empty timeline and is left out).
	ranges := make([]store.RoomRange, 0, len(d.rooms)+len(quiet))
	for _, sr := range d.rooms {
		ranges = append(ranges, sr.rng)
	}
	for _, room := range quiet {
		ranges = append(ranges, store.RoomRange{RoomID: room, After: since, Upto: d.pos})
	}
	ignored := clientevent.ParseIgnoredUsers(start.Entry, userID)
	var err error
	if d.timelines, err = readTimelines(ctx, rd, ranges, opts.limit, timelineKeep(opts.filter, ignored)); err != nil {
		return d, err
	}
	for _, room := range quiet {
		if len(d.timelines[room].Events) == 0 {
			delete(d.timelines, room)
			continue
		}
		d.rooms = append(d.rooms, syncRoom{kind: kindIncremental, rng: store.RoomRange{RoomID: room, After: since, Upto: d.pos}})
	}

	// Round trip 3: what the user may see of the timelines (history
	// visibility), the summaries and unread counts of the joined rooms,
	// and the events that relate to the timelines' (bundled aggregations).
	// It ends the snapshot when nothing else will be read: the usual
	// incremental sync, with no newly joined rooms, gaps, invites or lazy
	// members.
	var joined, withEvents []string
	last := opts.filter.LazyFilter() == nil && len(invited) == 0
	for _, sr := range d.rooms {
		tl := d.timelines[sr.rng.RoomID]
		if sr.kind != kindLeft {
			joined = append(joined, sr.rng.RoomID)
		}
		if len(tl.Events) > 0 {
			withEvents = append(withEvents, sr.rng.RoomID)
		}
		if sr.kind == kindFull || (sr.kind != kindLeft && tl.Limited) {
			last = false // readers below may need the snapshot
		}
	}
	erased, err := s.history.ErasedUsers(ctx)
	if err != nil {
		return d, err
	}
	logs := map[string][]store.MembershipEntry{}
	var eventIDs []string
	for _, room := range withEvents {
		for _, e := range d.timelines[room].Events {
			eventIDs = append(eventIDs, e.EventID)
		}
	}
	b = &store.Batch{}
	b.MembershipLog(userID, withEvents, logs)
	b.RoomSummaries(joined, userID, d.summaries)
	b.Children(eventIDs, clientevent.BundledRelTypes, &d.children)
	d.unread = &unreadRead{rooms: make(map[string]bool, len(joined))}
	for _, room := range joined {
		d.unread.rooms[room] = true
	}
	b.UnreadCounts(userID, joined, d.pos, &d.unread.counts)
	send := rd.Send
	if last {
		send = rd.SendLast
	}
	if err := send(ctx, b); err != nil {
		return d, err
	}
	vf := history.VisibilityFilter{UserID: userID, Logs: logs, Erased: erased}
	for _, room := range withEvents {
		tl := d.timelines[room]
		tl.Events = vf.Keep(tl.Events)
		if err := s.history.ApplyErasure(ctx, vf, tl.Events); err != nil {
			return d, err
		}
		d.timelines[room] = tl
	}
	if last {
		return d, nil
	}

	// Further round trips, for what the usual sync does not need.
	var emptyFull []string
	for _, sr := range d.rooms {
		roomID := sr.rng.RoomID
		tl := d.timelines[roomID]
		switch {
		case sr.kind != kindLeft && opts.filter.LazyFilter() != nil:
			// readLazyState below
		case sr.kind == kindFull && len(tl.Events) == 0:
			emptyFull = append(emptyFull, roomID)
		case sr.kind != kindFull && tl.Limited && len(tl.Events) > 0:
			if d.gaps[roomID], err = rd.GapState(ctx, roomID, sr.rng.After, tl.Events[0].Pos); err != nil {
				return d, err
			}
		}
	}
	if d.current, err = rd.CurrentStateRooms(ctx, emptyFull, nil); err != nil {
		return d, err
	}
	if opts.filter.LazyFilter() != nil {
		if err := s.readLazyState(ctx, rd, dev, opts, &d); err != nil {
			return d, err
		}
	}

	if len(invited) > 0 {
		rooms := make([]string, len(invited))
		for i, m := range invited {
			rooms[i] = m.RoomID
		}
		stripped, err := rd.CurrentStateRooms(ctx, rooms, clientevent.StrippedStateTypes)
		if err != nil {
			return d, err
		}
		// Invites and knocks in rooms of other servers: the stripped
		// state they carried (store/outofroom.go).
		remote, err := rd.OutOfRoomState(ctx, userID, rooms)
		if err != nil {
			return d, err
		}
		for _, m := range invited {
			events := stripped[m.RoomID]
			if r, ok := remote[m.RoomID]; ok {
				events = r
			}
			if own, err := rd.CurrentStateEvent(ctx, m.RoomID, "m.room.member", userID); err == nil {
				if ignored[own.Sender] && own.Membership == store.MembershipInvite {
					continue // invites from ignored users are not shown
				}
				events = append(events, own)
			}
			d.invites[m.RoomID] = events
		}
	}
	return d, nil
}

// stateBefore asks the room-server for the state before the first
// timeline event of each kindFull room, rendered for the client and keyed
// by that event's ID.
func (s *Service) stateBefore(ctx context.Context, d syncData) (map[string][]json.RawMessage, error) {
	var ids []string
	for _, sr := range d.rooms {
		if _, lazy := d.lazyState[sr.rng.RoomID]; lazy {
			continue
		}
		if tl := d.timelines[sr.rng.RoomID]; sr.kind == kindFull && len(tl.Events) > 0 {
			ids = append(ids, tl.Events[0].EventID)
		}
	}
	out := map[string][]json.RawMessage{}
	if len(ids) == 0 {
		return out, nil
	}
	resp, err := s.rooms.QueryStateBatch(ctx, &roomserverv1.QueryStateBatchRequest{EventIds: ids})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryStateBatch", err, nil)
	}
	for _, st := range resp.GetStates() {
		events, err := clientevent.RenderPDUs(st.GetState(), false)
		if err != nil {
			return nil, err
		}
		out[st.GetEventId()] = events
	}
	return out, nil
}

// renderTimeline renders a timeline for the requesting device.
func renderTimeline(tl store.Timeline, dev *httpapi.Device, pos int64, bundled history.Bundles) (timelineBatch, error) {
	b := timelineBatch{Events: make([]json.RawMessage, 0, len(tl.Events)), Limited: tl.Limited}
	for _, e := range tl.Events {
		raw, err := bundled.Render(e, dev, false)
		if err != nil {
			return b, err
		}
		b.Events = append(b.Events, raw)
	}
	if len(tl.Events) > 0 {
		b.PrevBatch = clientevent.StreamToken{Pos: tl.Events[0].Pos - 1}.String()
	} else {
		b.PrevBatch = clientevent.StreamToken{Pos: pos}.String()
	}
	return b, nil
}

// toSummary renders a summary read by RoomSummaries (one aggregate query
// for all rooms): member counts, and heroes when the room has no name.
func toSummary(rs store.RoomSummary) roomSummary {
	sum := roomSummary{Joined: rs.Joined, Invited: rs.Invited}
	if !rs.Named {
		sum.Heroes = rs.Heroes
	}
	return sum
}

// syncFilterParam resolves /sync's filter parameter: inline JSON when it
// starts with '{', otherwise a filter ID of the caller.
func (s *Service) syncFilterParam(r *http.Request, dev *httpapi.Device) (clientevent.Filter, error) {
	v := r.URL.Query().Get("filter")
	if v == "" {
		return clientevent.Filter{}, nil
	}
	if strings.HasPrefix(strings.TrimSpace(v), "{") {
		if !json.Valid([]byte(v)) {
			return clientevent.Filter{}, matrixhttp.NotJSON("Filter is not valid JSON")
		}
		return clientevent.ParseFilter([]byte(v))
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return clientevent.Filter{}, matrixhttp.InvalidParam("Unknown filter")
	}
	raw, err := s.store.Filter(r.Context(), dev.UserID, id)
	if errors.Is(err, store.ErrNotFound) {
		return clientevent.Filter{}, matrixhttp.InvalidParam("Unknown filter")
	}
	if err != nil {
		return clientevent.Filter{}, err
	}
	return clientevent.ParseFilter(raw)
}

// refuseAppserviceSender refuses /sync, /events and /initialSync to an
// application service acting as its sender (its as_token without a
// user_id): it must sync as one of its users, and is expected to take
// events from its transactions (spec v1.19, "Using /sync and /events").
// The sender logged in with an access token of its own is a user like
// any other.
func refuseAppserviceSender(dev *httpapi.Device) error {
	if dev != nil && dev.Appservice != nil && dev.UserID == string(dev.Appservice.SenderUserID()) {
		return matrixhttp.Forbidden("An application service syncs as one of its users (user_id), not as its sender")
	}
	return nil
}
