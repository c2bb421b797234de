// Package lru is a small bounded least-recently-used cache, shared by the
// statement caches of the proxy and the router. It starts no goroutines.
package lru

import (
	"container/list"
	"sync"
)

// Cache maps keys to values, keeping at most Max entries and dropping the
// least recently used. Safe for concurrent use; the zero value is not
// usable: call New.
type Cache[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	ll  list.List // of *entry[K, V], most recent first
	m   map[K]*list.Element
}

type entry[K comparable, V any] struct {
	k K
	v V
}

// New returns a cache holding at most max entries (none when max ≤ 0).
func New[K comparable, V any](max int) *Cache[K, V] {
	return &Cache[K, V]{max: max, m: make(map[K]*list.Element)}
}

// Get returns the value for k and marks it recently used.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	c.ll.MoveToFront(el)
	return el.Value.(*entry[K, V]).v, true
}

// Add stores v for k unless a value is already cached for k (another
// goroutine won the race), and returns the value now cached: v, or the
// earlier one. With max ≤ 0 it stores nothing and returns v.
func (c *Cache[K, V]) Add(k K, v V) V {
	if c.max <= 0 {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		c.ll.MoveToFront(el)
		return el.Value.(*entry[K, V]).v
	}
	c.m[k] = c.ll.PushFront(&entry[K, V]{k: k, v: v})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*entry[K, V]).k)
	}
	return v
}

// Len returns the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
