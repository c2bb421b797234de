package fanout

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/brownie/brownie-sidecar/health"
	"github.com/brownie/brownie-sidecar/internal/lru"
	"github.com/brownie/brownie-sidecar/merge"
	"github.com/brownie/brownie-sidecar/router"
)

// OnPrimary runs fn on the sidecar's own connection to shard's current
// primary (see health.Checker.OnHost).
type OnPrimary func(ctx context.Context, shard string, fn func(health.Conn) error) error

// Catalog holds what requests spanning shards learn from the shards'
// catalogs, shared by every session of a server: merge plans by
// statement text, enum sort orders by type, whether text sorts bytewise
// (database collation C), and the columns of tables written by
// replicated writes with the rewrites that pin their time (pintime.go).
// A schema change run through the sidecar clears what it may change.
// Safe for concurrent use.
type Catalog struct {
	router    *router.Router
	onPrimary OnPrimary
	plans     *lru.Cache[string, mergeEntry]

	mu        sync.Mutex
	enums     map[enumKey]map[string]float64 // nil value: not an enum
	collation string                         // the shards' database collation, once read

	columns *columnCache
}

// NewCatalog returns an empty catalog that reads the shards' catalogs
// through onPrimary.
func NewCatalog(rt *router.Router, onPrimary OnPrimary) *Catalog {
	return &Catalog{router: rt, onPrimary: onPrimary, plans: lru.New[string, mergeEntry](4096),
		enums: map[enumKey]map[string]float64{}, columns: newColumnCache()}
}

// enumKey names a type on one shard: type OIDs differ between shards.
type enumKey struct {
	shard string
	oid   uint32
}

type mergeEntry struct {
	plan *merge.Plan
	err  error
}

// schemaChanged forgets what a schema change may change: enum labels and
// tables' columns.
func (c *Catalog) schemaChanged() {
	c.mu.Lock()
	c.enums = map[enumKey]map[string]float64{}
	c.mu.Unlock()
	c.columns.clear()
}

// mergePlan returns the merge plan of sql (nil when its rows need no
// merging), or the 0A000 error refusing it. Plans are cached by text.
func (c *Catalog) mergePlan(sql string) (*merge.Plan, error) {
	if e, ok := c.plans.Get(sql); ok {
		return e.plan, e.err
	}
	p, err := merge.Analyze(sql)
	e := c.plans.Add(sql, mergeEntry{plan: p, err: err})
	return e.plan, e.err
}

// enumOrder returns the sort positions of the labels of enum type oid on
// shard (the shard whose RowDescription named the type: OIDs differ
// between shards), read once per type from that shard's catalog.
func (c *Catalog) enumOrder(shard string, oid uint32) (map[string]float64, bool) {
	key := enumKey{shard, oid}
	c.mu.Lock()
	m, ok := c.enums[key]
	c.mu.Unlock()
	if ok {
		return m, m != nil
	}
	var labels map[string]float64
	err := c.onPrimary(context.Background(), shard, func(conn health.Conn) error {
		return conn.Exec("SELECT enumlabel, enumsortorder FROM pg_catalog.pg_enum WHERE enumtypid = "+strconv.FormatUint(uint64(oid), 10), func(row [][]byte) {
			if len(row) == 2 {
				f, err := strconv.ParseFloat(string(row[1]), 64)
				if err == nil {
					if labels == nil {
						labels = map[string]float64{}
					}
					labels[string(row[0])] = f
				}
			}
		})
	})
	if err != nil {
		return nil, false // not cached: the next merge asks again
	}
	c.mu.Lock()
	c.enums[key] = labels
	c.mu.Unlock()
	return labels, labels != nil
}

// bytewiseText reports whether the shards' database collation sorts text
// bytewise, as the merge compares it (C, POSIX, C.UTF-8). It is read
// once from the first shard's primary, on the health checker's
// connection (the request's own connections are busy).
func (c *Catalog) bytewiseText() (bool, error) {
	c.mu.Lock()
	coll := c.collation
	c.mu.Unlock()
	if coll == "" {
		err := c.onPrimary(context.Background(), c.router.Map().Shards[0].Name, func(conn health.Conn) error {
			return conn.Exec("SELECT datcollate FROM pg_catalog.pg_database WHERE datname = current_database()", func(row [][]byte) {
				if len(row) == 1 {
					coll = string(row[0])
				}
			})
		})
		if err != nil {
			return false, err
		}
		c.mu.Lock()
		c.collation = coll
		c.mu.Unlock()
	}
	switch strings.ToLower(coll) {
	case "c", "posix", "c.utf-8", "c.utf8":
		return true, nil
	}
	return false, nil
}
