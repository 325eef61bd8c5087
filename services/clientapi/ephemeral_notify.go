package clientapi

// Wake-ups for ephemeral data (typing, receipts, presence), called by the
// consumer of the presence service's stream (ephemeral_consumer.go).

// ephemeralRoom wakes every joined member of a room.
func (n *notifier) ephemeralRoom(roomID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	woken := map[string]struct{}{}
	for u := range n.joined[roomID] {
		woken[u] = struct{}{}
	}
	n.ephemeralLocked(woken, pos)
}

// ephemeralUser wakes one user (a private receipt concerns only its owner).
func (n *notifier) ephemeralUser(userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ephemeralLocked(map[string]struct{}{userID: {}}, pos)
}

// ephemeralSharing wakes a user and everyone sharing a joined room with
// them (a presence change). It scans the rooms: the notifier keeps no
// user -> rooms index.
func (n *notifier) ephemeralSharing(userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	woken := map[string]struct{}{userID: {}}
	for _, members := range n.joined {
		if _, ok := members[userID]; !ok {
			continue
		}
		for u := range members {
			woken[u] = struct{}{}
		}
	}
	n.ephemeralLocked(woken, pos)
}

func (n *notifier) ephemeralLocked(users map[string]struct{}, pos int64) {
	for u := range users {
		n.userEPos[u] = max(n.userEPos[u], pos)
	}
	n.wakeLocked(users)
}
