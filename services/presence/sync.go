package presence

import (
	"context"
	"errors"
	"slices"

	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/presence/store"
)

// syncEphemeral answers SyncEphemeral: what changed for one user after
// since (or everything current on an initial sync), up to the committed
// position read first, which becomes the next since.
func (s *Service) syncEphemeral(ctx context.Context, req *presencev1.SyncEphemeralRequest) (*presencev1.SyncEphemeralResponse, error) {
	upto := s.pos.Load()
	userID, rooms := req.GetUserId(), req.GetRoomIds()
	since := req.GetSince()
	if req.GetInitial() {
		since = 0
	}
	resp := &presencev1.SyncEphemeralResponse{Position: upto}
	if since >= upto && !req.GetInitial() && len(req.GetFullRoomIds()) == 0 {
		// Nothing committed since: typing is the only thing that could
		// differ, and its changes also take positions.
		return resp, nil
	}
	byRoom := map[string]*presencev1.RoomEphemeral{}
	get := func(room string) *presencev1.RoomEphemeral {
		if re := byRoom[room]; re != nil {
			return re
		}
		re := &presencev1.RoomEphemeral{RoomId: room}
		byRoom[room] = re
		return re
	}
	// Rooms joined since the last sync get their current data, like an
	// initial sync; the others get what changed.
	full := req.GetFullRoomIds()
	if req.GetInitial() {
		full = rooms
	}
	var changed []string
	for _, room := range rooms {
		if !slices.Contains(full, room) {
			changed = append(changed, room)
		}
	}
	typing := s.typingSince(full, 0, true)
	for room, users := range s.typingSince(changed, since, false) {
		typing[room] = users
	}
	for room, users := range typing {
		re := get(room)
		re.TypingChanged = true
		re.TypingUserIds = users
	}
	receipts, err := s.store.Receipts(ctx, full, 0, upto)
	if err != nil {
		return nil, err
	}
	more, err := s.store.Receipts(ctx, changed, since, upto)
	if err != nil {
		return nil, err
	}
	receipts = append(receipts, more...)
	for _, r := range receipts {
		if private(r.Type) && r.UserID != userID {
			continue
		}
		re := get(r.RoomID)
		if r.Type == FullyRead {
			re.FullyReadEventId = r.EventID
			continue
		}
		re.Receipts = append(re.Receipts, receiptProto(r))
	}
	for _, room := range rooms {
		if re := byRoom[room]; re != nil {
			resp.Rooms = append(resp.Rooms, re)
		}
	}

	rows, err := s.visiblePresence(ctx, userID, since, upto)
	if err != nil {
		return nil, err
	}
	if since > 0 {
		// Users who newly share a room with the requester: their current
		// presence, even if it did not change.
		fresh, err := s.store.NewlySharing(ctx, userID, since, upto)
		if err != nil {
			return nil, err
		}
		var missing []string
		for _, u := range fresh {
			if !slices.ContainsFunc(rows, func(p store.Presence) bool { return p.UserID == u }) {
				missing = append(missing, u)
			}
		}
		more, err := s.store.PresenceOf(ctx, missing, 0, upto)
		if err != nil {
			return nil, err
		}
		rows = append(rows, more...)
	}
	now := s.clock.Now()
	for _, p := range rows {
		resp.Presence = append(resp.Presence, s.render(p, now))
	}
	return resp, nil
}

// visiblePresence returns the presence rows in (since, upto] that userID
// may see: their own and those of users sharing a joined room with them.
// From the start (an initial sync), every such user's row: list the users,
// then read their rows. Otherwise only the rows changed since, each
// checked for a shared room, which costs what changed instead of the size
// of the user's rooms.
func (s *Service) visiblePresence(ctx context.Context, userID string, since, upto int64) ([]store.Presence, error) {
	if since > 0 {
		return s.store.VisiblePresenceChanges(ctx, userID, since, upto)
	}
	visible, err := s.store.VisibleUsers(ctx, userID)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(visible, userID) {
		visible = append(visible, userID)
	}
	return s.store.PresenceOf(ctx, visible, 0, upto)
}

// getPresence answers GetPresence: the user themself, or a user sharing a
// room with them, may see it.
func (s *Service) getPresence(ctx context.Context, requester, userID string) (*presencev1.Presence, error) {
	if requester != userID {
		ok, err := s.store.ShareRoom(ctx, requester, userID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, ErrForbidden
		}
	}
	p, err := s.store.GetPresence(ctx, userID)
	if errors.Is(err, store.ErrNotFound) {
		return &presencev1.Presence{UserId: userID, Presence: Offline}, nil
	}
	if err != nil {
		return nil, err
	}
	return s.render(p, s.clock.Now()), nil
}
