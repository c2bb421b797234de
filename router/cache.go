package router

import (
	"container/list"
	"sync"
)

// maxCachedText is the longest statement text whose plan is cached; longer
// texts (bulk INSERTs, huge IN lists) are parsed at each use instead of
// pushing many small plans out.
const maxCachedText = 256 << 10

// planCache is a bounded LRU of plans keyed by statement text. Safe for
// concurrent use.
type planCache struct {
	mu  sync.Mutex
	max int
	ll  list.List // of *planEntry, most recent first
	m   map[string]*list.Element
}

type planEntry struct {
	text string
	p    *StmtPlan
}

func newPlanCache(max int) *planCache {
	return &planCache{max: max, m: make(map[string]*list.Element, max)}
}

func (c *planCache) get(text string) *StmtPlan {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[text]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(el)
	return el.Value.(*planEntry).p
}

// put stores p for text unless another goroutine stored one first, and
// returns the plan now cached (or p when text is too long to cache).
func (c *planCache) put(text string, p *StmtPlan) *StmtPlan {
	if len(text) > maxCachedText || c.max <= 0 {
		return p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[text]; ok {
		c.ll.MoveToFront(el)
		return el.Value.(*planEntry).p
	}
	c.m[text] = c.ll.PushFront(&planEntry{text: text, p: p})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*planEntry).text)
	}
	return p
}

// len returns the number of cached plans.
func (c *planCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
