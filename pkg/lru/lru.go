// Package lru is a small, thread-safe, size-bounded least-recently-used
// cache, shared by the services' in-memory caches.
package lru

import (
	"container/list"
	"sync"
)

// Cache is a least-recently-used cache of at most its size entries and,
// when made with NewWeighted, at most its total weight. Values must be
// treated as immutable by callers: they are shared.
type Cache[K comparable, V any] struct {
	mu    sync.Mutex
	size  int
	order *list.List // front = most recent; elements hold *entry
	items map[K]*list.Element
	// weight, when set, is each value's weight (e.g. the entries of a
	// room's state); the cache keeps their sum at most maxWeight, but
	// always keeps the most recent entry.
	weight    func(V) int
	maxWeight int
	total     int
}

type entry[K comparable, V any] struct {
	key K
	val V
	w   int
}

// New makes a cache of at most size entries. Its map grows with its
// entries: an empty cache is small whatever its size (allocating room for
// all of them up front made the room-server's three 100,000-entry caches
// hold about 11 MB from the start, #20).
func New[K comparable, V any](size int) *Cache[K, V] {
	return &Cache[K, V]{size: size, order: list.New(), items: make(map[K]*list.Element, min(size, 64))}
}

// NewWeighted makes a cache of at most size entries whose values' weights
// sum to at most maxWeight: for values of very different sizes (the state
// of a 2-member room and of a 10,000-member one), where a count alone
// bounds nothing.
func NewWeighted[K comparable, V any](size, maxWeight int, weight func(V) int) *Cache[K, V] {
	c := New[K, V](size)
	c.weight, c.maxWeight = weight, maxWeight
	return c
}

// Get returns the value for k and marks it the most recently used.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Put adds or replaces k's value, dropping the least recently used
// entries past the size (and the weight).
func (c *Cache[K, V]) Put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := 0
	if c.weight != nil {
		w = c.weight(v)
	}
	if el, ok := c.items[k]; ok {
		e := el.Value.(*entry[K, V])
		c.total += w - e.w
		e.val, e.w = v, w
		c.order.MoveToFront(el)
	} else {
		c.items[k] = c.order.PushFront(&entry[K, V]{key: k, val: v, w: w})
		c.total += w
	}
	for c.order.Len() > c.size || (c.weight != nil && c.total > c.maxWeight && c.order.Len() > 1) {
		c.removeElement(c.order.Back())
	}
}

// Remove drops k.
func (c *Cache[K, V]) Remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.removeElement(el)
	}
}

func (c *Cache[K, V]) removeElement(el *list.Element) {
	e := el.Value.(*entry[K, V])
	c.order.Remove(el)
	delete(c.items, e.key)
	c.total -= e.w
}

// Len is the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// Weight is the sum of the entries' weights (0 without a weight function).
func (c *Cache[K, V]) Weight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}
