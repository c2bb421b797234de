package router

import "github.com/brownie/brownie-sidecar/internal/lru"

// maxCachedText is the longest statement text whose plan is cached; longer
// texts (bulk INSERTs, huge IN lists) are parsed at each use instead of
// pushing many small plans out.
const maxCachedText = 256 << 10

// planCache is a bounded LRU of plans keyed by statement text. Safe for
// concurrent use.
type planCache struct {
	c *lru.Cache[string, *StmtPlan]
}

func newPlanCache(max int) *planCache {
	return &planCache{c: lru.New[string, *StmtPlan](max)}
}

func (c *planCache) get(text string) *StmtPlan {
	p, _ := c.c.Get(text)
	return p
}

// put stores p for text unless another goroutine stored one first, and
// returns the plan now cached (or p when text is too long to cache).
func (c *planCache) put(text string, p *StmtPlan) *StmtPlan {
	if len(text) > maxCachedText {
		return p
	}
	return c.c.Add(text, p)
}

// len returns the number of cached plans.
func (c *planCache) len() int { return c.c.Len() }
