package clientapi

import "context"

// Changes that are not room events (account data today) wake long polls
// through wake. Each user has a wake counter: /sync reads it before
// building a response and waits only while it is unchanged, so a change
// that lands between building and waiting is not missed.

// wake counts a change for userID and wakes their waiting requests.
func (n *notifier) wake(userID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.wakes == nil {
		n.wakes = map[string]uint64{}
	}
	n.wakes[userID]++
	for _, ch := range n.waiters[userID] {
		close(ch)
	}
	delete(n.waiters, userID)
}

// wakeCount is the user's wake counter.
func (n *notifier) wakeCount(userID string) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.wakes[userID]
}

// waitUnlessWoken is wait that also returns at once when the user's wake
// counter is no longer seen.
func (n *notifier) waitUnlessWoken(ctx context.Context, userID string, after int64, seen uint64) {
	n.mu.Lock()
	woken := n.wakes[userID] != seen
	if woken {
		n.mu.Unlock()
		return
	}
	// Register while still holding the lock, so a wake cannot slip in
	// between the check and the registration.
	ch := make(chan struct{})
	if n.closed || n.userPos[userID] > after {
		n.mu.Unlock()
		return
	}
	n.waiters[userID] = append(n.waiters[userID], ch)
	n.mu.Unlock()
	select {
	case <-ch:
		return
	case <-ctx.Done():
	case <-n.done:
	}
	n.removeWaiter(userID, ch)
}

// removeWaiter forgets a waiter that was not woken.
func (n *notifier) removeWaiter(userID string, ch chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	list := n.waiters[userID]
	for i, c := range list {
		if c == ch {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(n.waiters, userID)
	} else {
		n.waiters[userID] = list
	}
}
