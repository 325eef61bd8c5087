package appservice

import (
	"sync"

	"github.com/myelin-chat/myelin/pkg/lru"
)

// roomCache remembers, for the rooms consumer alone, what the room copy
// said about a room: that the copy has it, and which appservices are
// interested in the whole room (roomInterest: its ID, an alias or a joined
// user in their namespaces). Without it every event of every room paid two
// existence checks, a read of the room's members and aliases and a regex
// match per member and appservice (#20: more of the process's CPU than
// the client-API's copy consumer, for rooms no appservice cares about).
//
// Only the rooms consumer writes the copy, in stream order, and only it
// uses this cache, so an entry stays true until that consumer changes the
// room: a change of members or aliases forgets the room's interest (in
// the transaction, before anything reads it again), a batch that fails is
// rolled back and forgets everything (what the cache learnt from it may be
// gone), and so does each (re)start of the consumer (another replica may
// have applied events in between). Registrations are fixed for the
// process's life. Bounded by appservice.room_cache_size rooms.
type roomCache struct {
	size int
	mu   sync.Mutex
	c    *lru.Cache[string, roomEntry]
	// gen counts forget calls: an interest computed from a read that began
	// before a forget is not kept (setInterest).
	gen uint64
}

// roomEntry is one room: known to the copy, and, when computed, the IDs of
// the appservices interested in the whole room (nil when none).
type roomEntry struct {
	computed   bool
	interested []string
}

func newRoomCache(size int) *roomCache {
	rc := &roomCache{size: size}
	rc.reset()
	return rc
}

// reset forgets everything.
func (rc *roomCache) reset() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.c = lru.New[string, roomEntry](rc.size)
}

func (rc *roomCache) cache() *lru.Cache[string, roomEntry] {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.c
}

// get returns what is known of the room (ok: the copy has it).
func (rc *roomCache) get(roomID string) (roomEntry, bool) {
	return rc.cache().Get(roomID)
}

// known records that the copy has the room (its interest not computed).
func (rc *roomCache) known(roomID string) { rc.cache().Put(roomID, roomEntry{}) }

// generation is the forget count, taken before reading what setInterest
// will record.
func (rc *roomCache) generation() uint64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.gen
}

// setInterest records the appservices interested in the whole room,
// unless a forget came after gen was taken.
func (rc *roomCache) setInterest(roomID string, ids []string, gen uint64) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.gen == gen {
		rc.c.Put(roomID, roomEntry{computed: true, interested: ids})
	}
}

// forget drops rooms whose interest another consumer changed (the alias
// consumer, after its commit).
func (rc *roomCache) forget(roomIDs ...string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.gen++
	for _, id := range roomIDs {
		rc.c.Remove(id)
	}
}
