package notifier

// Wake-ups for ephemeral data (typing, receipts, presence), called by the
// consumer of the presence service's stream (internal/consumers/ephemeral.go).

// ephemeralRoom wakes every joined member of a room.
func (n *Notifier) EphemeralRoom(roomID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	woken := map[string]struct{}{}
	for u := range n.joined[roomID] {
		woken[u] = struct{}{}
	}
	n.ephemeralLocked(woken, pos)
}

// ephemeralUser wakes one user (a private receipt concerns only its owner).
func (n *Notifier) EphemeralUser(userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ephemeralLocked(map[string]struct{}{userID: {}}, pos)
}

// ephemeralSharing wakes a user and everyone sharing a joined room with
// them (a presence change), through the user's rooms (userRooms).
func (n *Notifier) EphemeralSharing(userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	woken := map[string]struct{}{userID: {}}
	for room := range n.userRooms[userID] {
		for u := range n.joined[room] {
			woken[u] = struct{}{}
		}
	}
	n.ephemeralLocked(woken, pos)
}

// ephemeralJoin wakes a user who joined a room and the room's members: the
// users who newly share a room with them. (Their other room-mates already
// shared one: waking them for every join made a user's joins cost the
// sum of all their rooms' sizes each, #5.) The joiner is woken by name,
// as this may come before the room event consumer has seen the join.
func (n *Notifier) EphemeralJoin(roomID, userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	woken := map[string]struct{}{userID: {}}
	for u := range n.joined[roomID] {
		woken[u] = struct{}{}
	}
	n.ephemeralLocked(woken, pos)
}

func (n *Notifier) ephemeralLocked(users map[string]struct{}, pos int64) {
	for u := range users {
		n.userEPos[u] = max(n.userEPos[u], pos)
	}
	n.wakeLocked(users)
}
