package clientapi

import "context"

// Room waiters: a peeking long poll (GET /events?room_id=) may come from a
// user who is not joined, so it waits on the room's own position instead
// of on the user's.

// roomCommittedLocked records an event of room at pos and releases the
// room's waiters. n.mu is held.
func (n *notifier) roomCommittedLocked(room string, pos int64) {
	n.roomPos[room] = pos
	for _, ch := range n.roomWaiters[room] {
		close(ch)
	}
	delete(n.roomWaiters, room)
}

// waitRoom blocks until an event of the room is committed at a position
// after `after`, ctx ends, or the notifier closes.
func (n *notifier) waitRoom(ctx context.Context, room string, after int64) {
	n.mu.Lock()
	if n.closed || n.roomPos[room] > after {
		n.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	n.roomWaiters[room] = append(n.roomWaiters[room], ch)
	n.mu.Unlock()

	select {
	case <-ch:
		return
	case <-ctx.Done():
	case <-n.done:
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	list := n.roomWaiters[room]
	for i, c := range list {
		if c == ch {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(n.roomWaiters, room)
	} else {
		n.roomWaiters[room] = list
	}
}
