package router

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// Host is one Postgres server.
type Host struct {
	// Addr is host:port.
	Addr string
	// ServerName is the name verify-full checks in the server certificate;
	// empty means the host part of Addr.
	ServerName string
}

// Shard is one primary and its replicas. The position of a shard in
// Map.Shards is its hash remainder: shard i holds the teams whose key
// hashes to i modulo the number of shards.
type Shard struct {
	Name     string
	Primary  Host
	Replicas []Host
	// Synchronous says the primary commits only once a standby has the
	// commit (synchronous_standby_names, synchronous_commit on): after a
	// failure, writes move only to a promoted host that was a synchronous
	// standby of the failed primary, so no acknowledged write is lost.
	Synchronous bool
}

// TableClass says how a table's rows are spread over the shards.
type TableClass uint8

// Table classes.
const (
	// Sharded tables keep each row on the shard of its key column's value.
	Sharded TableClass = iota + 1
	// Replicated tables hold the same rows on every shard: reads go to any
	// one shard, writes must reach all of them.
	Replicated
)

// String returns the shard-map spelling of c.
func (c TableClass) String() string {
	switch c {
	case Sharded:
		return "sharded"
	case Replicated:
		return "replicated"
	}
	return "TableClass(" + strconv.Itoa(int(c)) + ")"
}

// KeylessPolicy says where a statement goes when it touches a sharded table
// without a usable key (no key predicate, no hint).
type KeylessPolicy uint8

// Keyless policies. The zero value is KeylessReject.
const (
	// KeylessReject refuses the statement with SQLSTATE 08004, naming the
	// table and the ways to add a key.
	KeylessReject KeylessPolicy = iota
	// KeylessAll sends the statement to every shard (a fan-out whose
	// results are merged). An INSERT without a key is still refused: it
	// would insert its rows on every shard.
	KeylessAll
	// KeylessDefault sends the statement to Table.DefaultShard.
	KeylessDefault
)

// String returns the shard-map spelling of p.
func (p KeylessPolicy) String() string {
	switch p {
	case KeylessReject:
		return "reject"
	case KeylessAll:
		return "all"
	case KeylessDefault:
		return "default"
	}
	return "KeylessPolicy(" + strconv.Itoa(int(p)) + ")"
}

// ParseKeylessPolicy parses reject, all or default.
func ParseKeylessPolicy(s string) (KeylessPolicy, error) {
	switch s {
	case "reject":
		return KeylessReject, nil
	case "all":
		return KeylessAll, nil
	case "default":
		return KeylessDefault, nil
	}
	return 0, fmt.Errorf("keyless policy %q: must be reject, all or default", s)
}

// UnlistedPolicy says how statements treat tables the map does not name
// (system catalogs — pg_catalog, information_schema and unqualified pg_*
// names — are always readable on any shard).
type UnlistedPolicy uint8

// Unlisted-table policies. The zero value is UnlistedReject.
const (
	// UnlistedReject refuses statements on tables the map does not name
	// (SQLSTATE 08004), so a new table cannot be written to an arbitrary
	// shard by mistake.
	UnlistedReject UnlistedPolicy = iota
	// UnlistedReplicated treats unnamed tables as replicated.
	UnlistedReplicated
)

// String returns the shard-map spelling of p.
func (p UnlistedPolicy) String() string {
	if p == UnlistedReplicated {
		return "replicated"
	}
	return "reject"
}

// Table is the map's entry for one table.
type Table struct {
	// Name is the table name as PostgreSQL stores it (lower case unless
	// created quoted), unqualified for schema public or "schema.name".
	Name  string
	Class TableClass
	// KeyColumn is the column holding the routing key (sharded only).
	KeyColumn string
	// NullShard is the shard of rows whose key is NULL (sharded, nullable
	// key columns only); empty means a NULL key is treated like no key.
	NullShard string
	// Keyless is the policy for statements with no key for this table.
	Keyless KeylessPolicy
	// DefaultShard is the target of KeylessDefault.
	DefaultShard string
}

// Override pins one team to a named shard, whatever its hash says: a
// dedicated shard for a large customer, or a team being moved.
type Override struct {
	// Key is the team key in text form (any spelling ParseKey accepts).
	Key string
	// Shard is the name of the shard the team lives on.
	Shard string
}

// Map is an immutable shard map: the shards, the key type, every table's
// class and the per-team overrides. Build it with ParseMap or LoadMap, or
// as a literal (a one-shard map needs only Shards). Never modify a Map
// after passing it to a Router; Routers keep the pointer and read it
// concurrently.
type Map struct {
	// KeyType is the type of every sharded table's key column.
	KeyType KeyType
	// Shards in hash order; at least one.
	Shards []Shard
	// Tables named by the map.
	Tables []Table
	// Unlisted is the policy for tables not in Tables.
	Unlisted UnlistedPolicy
	// Overrides pin teams to shards; they win over the hash.
	Overrides []Override
}

// Validate reports every problem with m, joined with errors.Join.
func (m *Map) Validate() error {
	_, err := compileMap(m)
	return err
}

// Shard returns the shard named name.
func (m *Map) Shard(name string) (Shard, bool) {
	for _, s := range m.Shards {
		if s.Name == name {
			return s, true
		}
	}
	return Shard{}, false
}

// ShardNames returns the shard names in hash order.
func (m *Map) ShardNames() []string {
	out := make([]string, len(m.Shards))
	for i, s := range m.Shards {
		out[i] = s.Name
	}
	return out
}

// compiled is the lookup form of a valid Map.
type compiled struct {
	m         *Map
	shardIdx  map[string]int
	tables    map[string]*Table // by "name" (schema public) or "schema.name"
	overrides map[Key]int
}

func compileMap(m *Map) (*compiled, error) {
	if m == nil {
		return nil, errors.New("shard map is nil")
	}
	c := &compiled{
		m:         m,
		shardIdx:  make(map[string]int, len(m.Shards)),
		tables:    make(map[string]*Table, len(m.Tables)),
		overrides: make(map[Key]int, len(m.Overrides)),
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if m.KeyType > KeyText {
		bad("key_type: unknown key type %d", m.KeyType)
	}
	if m.Unlisted > UnlistedReplicated {
		bad("unlisted_tables: unknown policy %d", m.Unlisted)
	}
	if len(m.Shards) == 0 {
		bad("shards: the map has no shards")
	}
	addrs := map[string]string{}
	for i, s := range m.Shards {
		name := s.Name
		switch {
		case name == "":
			bad("shards[%d]: no name", i)
			name = fmt.Sprintf("shards[%d]", i)
		case !validShardName(name):
			bad("shard %q: names use letters, digits, '-', '_' and '.' only", name)
		}
		if _, dup := c.shardIdx[s.Name]; dup && s.Name != "" {
			bad("shard %q: name used twice", s.Name)
		} else if s.Name != "" {
			c.shardIdx[s.Name] = i
		}
		if s.Synchronous && len(s.Replicas) == 0 {
			bad("shard %q: synchronous needs at least one replica (the synchronous standby writes may move to)", name)
		}
		hosts := append([]Host{s.Primary}, s.Replicas...)
		for j, h := range hosts {
			what := "primary"
			if j > 0 {
				what = fmt.Sprintf("replica %d", j)
			}
			if err := checkAddr(h.Addr); err != nil {
				bad("shard %q: %s: %v", name, what, err)
				continue
			}
			if prev, dup := addrs[h.Addr]; dup {
				bad("shard %q: %s: address %s is also %s", name, what, h.Addr, prev)
			}
			addrs[h.Addr] = fmt.Sprintf("shard %q %s", name, what)
		}
	}
	var names []string
	for i, s := range m.Shards {
		if j, ok := c.shardIdx[s.Name]; ok && j == i {
			names = append(names, s.Name)
		}
	}
	shardList := strings.Join(names, ", ")
	knownShard := func(table, field, shard string) {
		if _, ok := c.shardIdx[shard]; !ok {
			bad("table %q: %s %q is not a shard (shards: %s)", table, field, shard, shardList)
		}
	}
	for i := range m.Tables {
		t := &m.Tables[i]
		if t.Name == "" {
			bad("tables[%d]: no name", i)
			continue
		}
		if strings.Count(t.Name, ".") > 1 || strings.HasPrefix(t.Name, ".") || strings.HasSuffix(t.Name, ".") {
			bad("table %q: write the name as table or schema.table", t.Name)
		}
		key := strings.TrimPrefix(t.Name, "public.")
		if _, dup := c.tables[key]; dup {
			bad("table %q: listed twice", t.Name)
		}
		c.tables[key] = t
		switch t.Class {
		case Sharded:
			if t.KeyColumn == "" {
				bad("table %q: a sharded table needs sharded_by (its key column)", t.Name)
			}
			if t.NullShard != "" {
				knownShard(t.Name, "null_shard", t.NullShard)
			}
			switch t.Keyless {
			case KeylessReject, KeylessAll:
				if t.DefaultShard != "" {
					bad("table %q: default_shard is only used with keyless: default", t.Name)
				}
			case KeylessDefault:
				if t.DefaultShard == "" {
					bad("table %q: keyless: default needs default_shard", t.Name)
				} else {
					knownShard(t.Name, "default_shard", t.DefaultShard)
				}
			default:
				bad("table %q: unknown keyless policy %d", t.Name, t.Keyless)
			}
		case Replicated:
			if t.KeyColumn != "" || t.NullShard != "" || t.DefaultShard != "" || t.Keyless != KeylessReject {
				bad("table %q: a replicated table takes no sharded_by, null_shard, keyless or default_shard", t.Name)
			}
		default:
			bad("table %q: class must be sharded or replicated", t.Name)
		}
	}
	for _, o := range m.Overrides {
		k, err := ParseKey(m.KeyType, o.Key)
		if err != nil {
			bad("override %q: not a valid %s key: %v", o.Key, m.KeyType, pgMessage(err))
			continue
		}
		idx, ok := c.shardIdx[o.Shard]
		if !ok {
			bad("override %q: shard %q is not a shard (shards: %s)", o.Key, o.Shard, shardList)
			continue
		}
		if _, dup := c.overrides[k]; dup {
			bad("override %q: team listed twice", o.Key)
		}
		c.overrides[k] = idx
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

func validShardName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return fmt.Errorf("address %q: %v", addr, err)
	}
	if host == "" {
		return fmt.Errorf("address %q: no host", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: port must be 1-65535", addr)
	}
	return nil
}

// pgMessage returns the client message of a *pgerr.Error, or err's text.
func pgMessage(err error) string {
	var pe *pgerr.Error
	if errors.As(err, &pe) {
		return pe.Message
	}
	return err.Error()
}

// table returns the map entry for a table reference (schema may be empty).
func (c *compiled) table(schema, name string) *Table {
	if schema == "" || schema == "public" {
		return c.tables[name]
	}
	return c.tables[schema+"."+name]
}

// place returns the shard index of k: its override, or its hash placement.
func (c *compiled) place(k Key) (idx int, override bool) {
	if i, ok := c.overrides[k]; ok {
		return i, true
	}
	return ShardIndex(k, len(c.m.Shards)), false
}

// LoadMap reads and parses the shard map file at path (see ParseMap).
func LoadMap(path string) (*Map, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("shard map: %w", err)
	}
	m, err := ParseMap(b)
	if err != nil {
		return nil, fmt.Errorf("shard map %s: %w", path, err)
	}
	return m, nil
}
