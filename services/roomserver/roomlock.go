package roomserver

import "sync"

// roomLocks serializes writers of one room inside this process. Across
// replicas the room's PostgreSQL advisory lock (store.BeginRoom) does the
// same; holding the in-process lock first keeps local writers from queueing
// on database connections.
type roomLocks struct {
	mu    sync.Mutex
	rooms map[string]*roomLock
}

type roomLock struct {
	mu   sync.Mutex
	refs int
}

func newRoomLocks() *roomLocks { return &roomLocks{rooms: map[string]*roomLock{}} }

// lock blocks until the caller holds roomID's lock and returns the unlock
// function.
func (l *roomLocks) lock(roomID string) (unlock func()) {
	l.mu.Lock()
	rl := l.rooms[roomID]
	if rl == nil {
		rl = &roomLock{}
		l.rooms[roomID] = rl
	}
	rl.refs++
	l.mu.Unlock()

	rl.mu.Lock()
	return func() {
		rl.mu.Unlock()
		l.mu.Lock()
		rl.refs--
		if rl.refs == 0 {
			delete(l.rooms, roomID)
		}
		l.mu.Unlock()
	}
}
