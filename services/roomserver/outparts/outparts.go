// Package outparts splits a room event message whose state change is
// too large for one JetStream message into ordered parts.
//
// Large state changes on JetStream. A commit's message carries the state
// it changed; a join of a remote room adds the room's whole state (10,000
// members are about 5 MB), more than a NATS server takes in one message
// (max_payload, 1 MB by default). Such a message is split into ordered
// parts on the room's subject (outparts.Split): the leading parts carry
// slices of the state change only, the last one is the event's message
// with the rest. Each part has its own Nats-Msg-Id (the event ID, and
// for part i < n the event ID with "#state.<i>"), so a republished
// commit is dropped part by part within the duplicate window.
package outparts

import (
	"strconv"

	"google.golang.org/protobuf/proto"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// MinMessageBytes is the least max_message_bytes. A part holds at least
// one state event, so with a bound below an event's size (at most 65,536
// bytes) that part is larger than the bound.
const MinMessageBytes = 1024

// payloadHeadroom is what a part leaves of the NATS server's max_payload
// for the message's headers and subject.
const payloadHeadroom = 4096

// Limit is the largest message to build: the configured bound, or less
// when the NATS server's max_payload (maxPayload; 0 when unknown) takes
// less.
func Limit(configured int, maxPayload int64) int {
	if mp := int(maxPayload); mp > 0 && mp-payloadHeadroom < configured {
		return max(mp-payloadHeadroom, MinMessageBytes)
	}
	return configured
}

// MsgID is the Nats-Msg-Id of part (1-based) of parts of eventID's
// message.
func MsgID(eventID string, part, parts int) string {
	if part == parts {
		return eventID
	}
	return eventID + "#state." + strconv.Itoa(part)
}

// Split returns o as it is when it fits limit bytes, or else as
// ordered parts, each of at most limit bytes but for a single state event
// larger than a part's room (it goes alone). Removed IDs come before
// added events, in their order.
func Split(o *roomserverv1.OutputRoomEvent, limit int) []*roomserverv1.OutputRoomEvent {
	if proto.Size(o) <= limit {
		return []*roomserverv1.OutputRoomEvent{o}
	}
	removed, added := o.RemovedStateEventIds, o.AddedStateEvents
	last := proto.Clone(o).(*roomserverv1.OutputRoomEvent)
	last.RemovedStateEventIds, last.AddedStateEvents = nil, nil
	// The last part holds the event and what fits beside it; the leading
	// parts the rest.
	lastRoom := limit - proto.Size(last)
	head := func() *roomserverv1.OutputRoomEvent {
		return &roomserverv1.OutputRoomEvent{RoomId: o.RoomId, RoomVersion: o.RoomVersion, EventId: o.EventId,
			StreamPosition: o.StreamPosition, Kind: o.Kind}
	}
	partRoom := limit - proto.Size(head()) - 16 // the part numbers
	// Items are packed greedily from the end into the last part, then
	// from the start into leading parts, so the order holds.
	itemSize := func(n int) int { return n + 4 } // tag and length
	var parts []*roomserverv1.OutputRoomEvent
	cur, used := head(), 0
	type item struct {
		removed string
		added   []byte
	}
	items := make([]item, 0, len(removed)+len(added))
	for _, id := range removed {
		items = append(items, item{removed: id})
	}
	for _, ev := range added {
		items = append(items, item{added: ev})
	}
	// Fill the last part from the end of the list.
	tail := len(items)
	for tail > 0 {
		it := items[tail-1]
		sz := itemSize(len(it.removed) + len(it.added))
		if sz > lastRoom {
			break
		}
		lastRoom -= sz
		tail--
	}
	for _, it := range items[:tail] {
		sz := itemSize(len(it.removed) + len(it.added))
		if used > 0 && used+sz > partRoom {
			parts = append(parts, cur)
			cur, used = head(), 0
		}
		if it.added != nil {
			cur.AddedStateEvents = append(cur.AddedStateEvents, it.added)
		} else {
			cur.RemovedStateEventIds = append(cur.RemovedStateEventIds, it.removed)
		}
		used += sz
	}
	if used > 0 {
		parts = append(parts, cur)
	}
	for _, it := range items[tail:] {
		if it.added != nil {
			last.AddedStateEvents = append(last.AddedStateEvents, it.added)
		} else {
			last.RemovedStateEventIds = append(last.RemovedStateEventIds, it.removed)
		}
	}
	parts = append(parts, last)
	n := int32(len(parts))
	for i, p := range parts {
		p.StatePart, p.StateParts = int32(i+1), n
	}
	return parts
}
