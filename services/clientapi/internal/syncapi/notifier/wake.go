package notifier

// Changes that are in neither the room stream nor the ephemeral stream
// (account data today) wake long polls through wake. Each user has a wake
// counter: /sync reads it before building a response and waits only while
// it is unchanged (SyncCursor.wakes), so a change that lands between
// building and waiting is not missed.

// wake counts a change for userID and wakes their waiting requests.
func (n *Notifier) Wake(userID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.wakes[userID]++
	n.wakeLocked(map[string]struct{}{userID: {}})
}

// wakeCount is the user's wake counter.
func (n *Notifier) WakeCount(userID string) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.wakes[userID]
}
