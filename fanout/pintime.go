package fanout

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/brownie/brownie-sidecar/internal/lru"
	"github.com/brownie/brownie-sidecar/router"
)

// A write to replicated tables runs on every shard, and each shard would
// evaluate now() (and defaults calling it) at its own transaction start:
// the copies of a row would differ. router.PinTime rewrites such writes
// to read the transaction-local setting brownie.now instead, and the
// request sets it, to one value, on every shard first. The value is the
// time of the transaction's first such write; within a transaction it
// stays the same, as now() does.

// columnCache holds the columns of the tables written by replicated
// writes, read from the catalog of the shard answering the request, so
// that INSERTs can be given their time-dependent defaults. Schema
// changes run through the sidecar clear it. Safe for concurrent use.
type columnCache struct {
	mu     sync.Mutex
	tables map[string][]router.Column
	gen    uint64 // grows at every clear
	// pinned caches router.PinTime's rewrites by generation and statement
	// text (set by newColumnCache).
	pinned *lru.Cache[pinKey, pinnedText]
}

// newColumnCache returns an empty cache.
func newColumnCache() *columnCache {
	return &columnCache{pinned: lru.New[pinKey, pinnedText](2048)}
}

type pinKey struct {
	gen uint64
	sql string
}

// pinnedText is a cached rewrite.
type pinnedText struct {
	out     string
	changed bool
	err     error
}

func (c *columnCache) get(table string) ([]router.Column, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cols, ok := c.tables[table]
	return cols, c.gen, ok
}

func (c *columnCache) put(table string, cols []router.Column, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return // a schema change came in between
	}
	if c.tables == nil {
		c.tables = map[string][]router.Column{}
	}
	c.tables[table] = cols
}

func (c *columnCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tables = nil
	c.gen++
}

// generation is the cache's current generation.
func (c *columnCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// columnsSQL reads a table's columns and defaults in order.
const columnsSQL = `SELECT a.attname, coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`

// pinning reports whether the request writes replicated tables (and so
// needs its time pinned).
func (f *Request) pinning() bool {
	return f.plan.Broadcast && !f.plan.ReadOnly && !f.plan.DDL && len(f.legs) > 1
}

// columns returns a table's columns from the cache, or from the catalog
// of the request's first leg. Called before the request is sent.
func (f *Request) columns(table string) ([]router.Column, bool) {
	cache := f.env.Deps.Catalog.columns
	cols, gen, ok := cache.get(table)
	if ok {
		return cols, cols != nil
	}
	_, err := f.legs[0].c.Exec(fmt.Sprintf(columnsSQL, quoteLiteral(table)), func(row [][]byte) {
		if len(row) == 2 {
			cols = append(cols, router.Column{Name: string(row[0]), Default: string(row[1])})
		}
	})
	if err != nil {
		return nil, false
	}
	cache.put(table, cols, gen)
	return cols, cols != nil
}

// pinTime rewrites sql when the request writes replicated tables, and
// queues, on every leg that lacks it, the setting the rewritten text
// reads. A schema change clears the column cache instead.
func (f *Request) pinTime(sql string) (string, error) {
	if f.plan.DDL {
		f.env.Deps.Catalog.schemaChanged()
	}
	if f.plan.Copy != nil {
		// The columns of a COPY without a column list are read now: once
		// the COPY runs, the legs are busy.
		if o, ok := isCopy(sql); ok && o.columns == nil {
			f.columns(o.table)
		}
		return sql, nil
	}
	if !f.pinning() {
		return sql, nil
	}
	out, changed, err := f.pin(sql)
	if err != nil || !changed {
		return sql, err
	}
	f.setNow()
	return out, nil
}

// pin is router.PinTime with the catalog of the request's first leg,
// cached by text for the column cache's generation.
func (f *Request) pin(sql string) (string, bool, error) {
	cache := f.env.Deps.Catalog.columns
	key := pinKey{cache.generation(), sql}
	if p, ok := cache.pinned.Get(key); ok {
		return p.out, p.changed, p.err
	}
	out, changed, err := router.PinTime(sql, f.columns)
	cache.pinned.Add(key, pinnedText{out: out, changed: changed, err: err})
	return out, changed, err
}

// pinnedDef returns the statement to prepare for def in a request that
// writes replicated tables: def itself, or its pinned rewrite (a variant
// kept with def), with the setting queued as pinTime does.
func (f *Request) pinnedDef(def Stmt) (Stmt, error) {
	out, changed, err := f.pin(def.SQL())
	if err != nil {
		return nil, err
	}
	if !changed {
		return def, nil
	}
	f.setNow()
	return def.Variant(out), nil
}

// setNow queues SET LOCAL brownie.now on every leg that lacks it: once
// per transaction spanning shards (kept for legs opened later), or in
// the wrapping transaction of a write outside one.
func (f *Request) setNow() {
	now := ""
	if f.xt != nil {
		if f.xt.now == "" {
			f.xt.now = time.Now().UTC().Format("2006-01-02 15:04:05.999999+00")
			sql := "SET LOCAL " + router.NowSetting + " = " + quoteLiteral(f.xt.now)
			f.xt.replay = append(f.xt.replay, TxStmt{SQL: sql})
		}
		now = f.xt.now
	} else {
		now = time.Now().UTC().Format("2006-01-02 15:04:05.999999+00")
	}
	sql := "SET LOCAL " + router.NowSetting + " = " + quoteLiteral(now)
	for _, l := range f.legs {
		if l.tx != nil && l.tx.now {
			continue
		}
		if l.tx != nil {
			l.tx.now = true
		}
		if l.nowSet {
			continue
		}
		l.nowSet = true
		f.injectQuery(l, sql)
	}
}

// quoteLiteral quotes s as an SQL string literal, correct whatever the
// setting of standard_conforming_strings.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return "E'" + strings.ReplaceAll(s, `\`, `\\`) + "'"
	}
	return "'" + s + "'"
}
