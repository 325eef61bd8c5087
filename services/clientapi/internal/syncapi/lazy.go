package syncapi

import (
	"cmp"
	"context"
	"encoding/json"
	"math"
	"slices"
	"sync"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Lazy-loaded members in /sync (room.state.lazy_load_members): a room's
// state carries only the member events of its timeline's senders and of
// the syncing user, read in SQL from the client-API's own copy of the
// state (store.StateBefore), never the room's full member list. On
// incremental syncs a member event the device was already sent is left
// out unless include_redundant_members; what was sent is remembered per
// device in memory (lazyCache), as Synapse does: after a restart, or when
// the cache is full, members are simply sent again.

// lazyCache remembers the member events sent to each device, per room:
// device key -> room -> member -> event ID. It is bounded by devices and
// by remembered members in all (sync.lazy_cache_devices and
// sync.lazy_cache_members); past either it starts over, and devices are
// then simply sent their members again.
type lazyCache struct {
	mu         sync.Mutex
	devices    map[string]map[string]map[string]string
	members    int // remembered in all
	maxDevices int
	maxMembers int
}

func newLazyCache(maxDevices, maxMembers int) *lazyCache {
	return &lazyCache{devices: map[string]map[string]map[string]string{}, maxDevices: maxDevices, maxMembers: maxMembers}
}

func lazyKey(dev *httpapi.Device) string { return dev.UserID + "|" + dev.DeviceID }

// reset forgets what the device was sent (initial and full_state syncs).
func (c *lazyCache) reset(dev *httpapi.Device) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, sent := range c.devices[lazyKey(dev)] {
		c.members -= len(sent)
	}
	delete(c.devices, lazyKey(dev))
}

// unsent keeps the member events the device has not been sent, and
// records them as sent.
func (c *lazyCache) unsent(dev *httpapi.Device, roomID string, members []store.CurrentStateEvent, redundant bool) []store.CurrentStateEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := lazyKey(dev)
	rooms := c.devices[k]
	if c.members+len(members) > c.maxMembers {
		c.devices, c.members, rooms = map[string]map[string]map[string]string{}, 0, nil
	}
	if rooms == nil {
		if len(c.devices) >= c.maxDevices {
			c.devices, c.members = map[string]map[string]map[string]string{}, 0
		}
		rooms = map[string]map[string]string{}
		c.devices[k] = rooms
	}
	sent := rooms[roomID]
	if sent == nil {
		sent = map[string]string{}
		rooms[roomID] = sent
	}
	out := members[:0:0]
	for _, m := range members {
		prev, known := sent[m.StateKey]
		if redundant || prev != m.EventID {
			out = append(out, m)
		}
		if !known {
			c.members++
		}
		sent[m.StateKey] = m.EventID
	}
	return out
}

// readLazyState fills d.lazyState for every joined room of the response:
// for a room shown in full, the non-member state before its timeline; for
// a limited incremental room, the non-member state that changed in the
// gap; and in both, the member events of the timeline's senders and the
// user as they were before the timeline.
func (s *Service) readLazyState(ctx context.Context, rd store.Reader, dev *httpapi.Device, opts syncOptions, d *syncData) error {
	sf := opts.filter.LazyFilter()
	if opts.since == nil || opts.fullState {
		s.lazy.reset(dev)
	}
	d.lazyState = map[string][]json.RawMessage{}
	var qs []store.StateQuery
	gaps := map[string][]store.StoredEvent{}
	for _, sr := range d.rooms {
		roomID := sr.rng.RoomID
		tl := d.timelines[roomID]
		if sr.kind == kindLeft || (sr.kind == kindIncremental && len(tl.Events) == 0) {
			continue
		}
		q := store.StateQuery{RoomID: roomID, Before: math.MaxInt64, NonMember: sr.kind == kindFull, Members: []string{dev.UserID}}
		if len(tl.Events) > 0 {
			q.Before = tl.Events[0].Pos
		}
		for _, e := range tl.Events {
			if !slices.Contains(q.Members, e.Sender) {
				q.Members = append(q.Members, e.Sender)
			}
		}
		qs = append(qs, q)
		if sr.kind == kindIncremental && tl.Limited {
			gap, err := rd.GapState(ctx, roomID, sr.rng.After, tl.Events[0].Pos)
			if err != nil {
				return err
			}
			gaps[roomID] = slices.DeleteFunc(gap, func(e store.StoredEvent) bool { return e.Type == "m.room.member" })
		}
	}
	states, err := rd.StateBefore(ctx, qs)
	if err != nil {
		return err
	}
	for _, q := range qs {
		var nonMember, members []store.CurrentStateEvent
		for _, e := range states[q.RoomID] {
			if e.Type == "m.room.member" {
				members = append(members, e)
			} else {
				nonMember = append(nonMember, e)
			}
		}
		for _, e := range gaps[q.RoomID] {
			nonMember = append(nonMember, store.CurrentStateEvent{EventID: e.EventID, Type: e.Type, JSON: e.JSON, Pos: e.Pos})
		}
		events := append(nonMember, s.lazy.unsent(dev, q.RoomID, members, sf.IncludeRedundantMembers)...)
		slices.SortStableFunc(events, func(a, b store.CurrentStateEvent) int { return cmp.Compare(a.Pos, b.Pos) })
		list := make([]json.RawMessage, 0, len(events))
		for _, e := range events {
			list = append(list, json.RawMessage(e.JSON))
		}
		d.lazyState[q.RoomID] = list
	}
	return nil
}
