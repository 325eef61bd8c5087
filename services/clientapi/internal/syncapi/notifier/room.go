package notifier

import "context"

// Room waiters: a peeking long poll (GET /events?room_id=) may come from a
// user who is not joined, so it waits on the room's own position instead
// of on the user's.

// roomCommittedLocked records an event of room at pos and releases the
// room's waiters. n.mu is held.
func (n *Notifier) roomCommittedLocked(room string, pos int64) {
	n.roomPos[room] = pos
	n.roomWaiters.release(room)
}

// waitRoom blocks until an event of the room is committed at a position
// after `after`, ctx ends, or the notifier closes.
func (n *Notifier) WaitRoom(ctx context.Context, room string, after int64) {
	n.mu.Lock()
	if n.closed || n.roomPos[room] > after {
		n.mu.Unlock()
		return
	}
	ch := n.roomWaiters.add(room)
	n.mu.Unlock()
	n.block(ctx, n.roomWaiters, room, ch)
}
