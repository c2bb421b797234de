package router

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ParseMap parses a shard map in YAML (format: deploy/shardmap/brownie.yaml)
// and validates it. The error lists every problem found, one per line,
// with YAML line numbers where they apply. ParseMap is pure: it reads only
// data.
//
//	key_type: uuid                # uuid | bigint | text
//	unlisted_tables: reject       # reject | replicated
//	keyless: reject               # default keyless policy: reject | all | default
//	shards:
//	  - name: shard-0
//	    primary: 10.0.0.1:5432    # or {addr: 10.0.0.1:5432, server_name: db0.internal}
//	    replicas: [10.0.0.2:5432]
//	    synchronous: true         # writes move only to a synchronous standby
//	tables:
//	  incidents: {sharded_by: team_id}
//	  stats: {sharded_by: team_id, null_shard: shard-0, keyless: all}
//	  users: replicated
//	overrides:
//	  "6f1c8a52-1d7e-4f4e-9d55-2f0a1c3b4d5e": shard-1
func ParseMap(data []byte) (*Map, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	p := &mapParser{}
	m := p.document(&doc)
	errs := p.errs
	if m != nil {
		if err := m.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

type mapParser struct {
	errs  []error
	lines []int
}

func (p *mapParser) bad(n *yaml.Node, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	line := 0
	if n != nil && n.Line > 0 {
		line = n.Line
		msg = fmt.Sprintf("line %d: %s", n.Line, msg)
	}
	// Keep the problems in file order.
	i := len(p.errs)
	for i > 0 && p.lines[i-1] > line {
		i--
	}
	p.errs = slices.Insert(p.errs, i, error(errors.New(msg)))
	p.lines = slices.Insert(p.lines, i, line)
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// fields walks a mapping node, calling fn for each known key and reporting
// unknown and repeated keys.
func (p *mapParser) fields(n *yaml.Node, path string, fn func(key string, val *yaml.Node), known ...string) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.bad(n, "%s: must be a mapping", path)
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		name := k.Value
		if seen[name] {
			p.bad(k, "%s: %q is given twice", path, name)
			continue
		}
		seen[name] = true
		ok := false
		for _, kn := range known {
			if kn == name {
				ok = true
				break
			}
		}
		if !ok {
			p.bad(k, "%s: unknown field %q (known: %s)", path, name, strings.Join(known, ", "))
			continue
		}
		fn(name, v)
	}
}

func (p *mapParser) scalar(n *yaml.Node, path string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.bad(n, "%s: must be a single value", path)
		return "", false
	}
	return n.Value, true
}

func (p *mapParser) document(doc *yaml.Node) *Map {
	if doc.Kind == 0 || len(doc.Content) == 0 {
		p.bad(nil, "the shard map is empty")
		return nil
	}
	root := deref(doc.Content[0])
	m := &Map{}
	var (
		defaultKeyless    = KeylessReject
		tablesNode        *yaml.Node
		keylessFromTables = map[int]bool{}
	)
	p.fields(root, "shard map", func(key string, v *yaml.Node) {
		switch key {
		case "key_type":
			if s, ok := p.scalar(v, key); ok {
				t, err := ParseKeyType(s)
				if err != nil {
					p.bad(v, "%v", err)
				}
				m.KeyType = t
			}
		case "unlisted_tables":
			if s, ok := p.scalar(v, key); ok {
				switch s {
				case "reject":
					m.Unlisted = UnlistedReject
				case "replicated":
					m.Unlisted = UnlistedReplicated
				default:
					p.bad(v, "unlisted_tables %q: must be reject or replicated", s)
				}
			}
		case "keyless":
			if s, ok := p.scalar(v, key); ok {
				pol, err := ParseKeylessPolicy(s)
				if err != nil {
					p.bad(v, "%v", err)
				} else if pol == KeylessDefault {
					p.bad(v, "keyless: the map-wide policy can be reject or all; set keyless: default with default_shard per table")
				} else {
					defaultKeyless = pol
				}
			}
		case "shards":
			m.Shards = p.shards(v)
		case "tables":
			tablesNode = v
		case "overrides":
			m.Overrides = p.overrides(v)
		}
	}, "key_type", "unlisted_tables", "keyless", "shards", "tables", "overrides")
	if tablesNode != nil {
		m.Tables = p.tables(tablesNode, keylessFromTables)
		for i := range m.Tables {
			if m.Tables[i].Class == Sharded && !keylessFromTables[i] {
				m.Tables[i].Keyless = defaultKeyless
			}
		}
	}
	return m
}

func (p *mapParser) shards(n *yaml.Node) []Shard {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.bad(n, "shards: must be a list")
		return nil
	}
	out := make([]Shard, 0, len(n.Content))
	for i, sn := range n.Content {
		path := fmt.Sprintf("shards[%d]", i)
		var s Shard
		hasPrimary := false
		p.fields(sn, path, func(key string, v *yaml.Node) {
			switch key {
			case "name":
				s.Name, _ = p.scalar(v, path+".name")
			case "primary":
				s.Primary = p.host(v, path+".primary")
				hasPrimary = true
			case "replicas":
				v = deref(v)
				if v.Kind != yaml.SequenceNode {
					p.bad(v, "%s.replicas: must be a list", path)
					return
				}
				for j, hn := range v.Content {
					s.Replicas = append(s.Replicas, p.host(hn, fmt.Sprintf("%s.replicas[%d]", path, j)))
				}
			case "synchronous":
				if v, ok := p.scalar(v, path+".synchronous"); ok {
					switch v {
					case "true":
						s.Synchronous = true
					case "false":
					default:
						p.bad(deref(sn), "%s.synchronous %q: must be true or false", path, v)
					}
				}
			}
		}, "name", "primary", "replicas", "synchronous")
		if !hasPrimary && deref(sn).Kind == yaml.MappingNode {
			p.bad(sn, "%s: no primary", path)
		}
		out = append(out, s)
	}
	return out
}

// host accepts "host:port" or {addr: host:port, server_name: name}.
func (p *mapParser) host(n *yaml.Node, path string) Host {
	n = deref(n)
	var h Host
	if n.Kind == yaml.ScalarNode {
		h.Addr = n.Value
		return h
	}
	p.fields(n, path, func(key string, v *yaml.Node) {
		switch key {
		case "addr":
			h.Addr, _ = p.scalar(v, path+".addr")
		case "server_name":
			h.ServerName, _ = p.scalar(v, path+".server_name")
		}
	}, "addr", "server_name")
	return h
}

// tables accepts name: replicated or name: {sharded_by, null_shard,
// keyless, default_shard}. explicit records which tables set keyless.
func (p *mapParser) tables(n *yaml.Node, explicit map[int]bool) []Table {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.bad(n, "tables: must be a mapping of table name to class")
		return nil
	}
	var out []Table
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		name := k.Value
		path := "tables." + name
		if seen[name] {
			p.bad(k, "%s: listed twice", path)
			continue
		}
		seen[name] = true
		t := Table{Name: name}
		switch v.Kind {
		case yaml.ScalarNode:
			switch v.Value {
			case "replicated":
				t.Class = Replicated
			case "sharded":
				p.bad(v, "%s: a sharded table is a mapping with sharded_by: {sharded_by: team_id}", path)
				continue
			default:
				p.bad(v, "%s: %q is not a table class: write replicated, or {sharded_by: column}", path, v.Value)
				continue
			}
		case yaml.MappingNode:
			t.Class = Sharded
			p.fields(v, path, func(key string, fv *yaml.Node) {
				s, ok := p.scalar(fv, path+"."+key)
				if !ok {
					return
				}
				switch key {
				case "sharded_by":
					t.KeyColumn = s
				case "null_shard":
					t.NullShard = s
				case "default_shard":
					t.DefaultShard = s
				case "keyless":
					pol, err := ParseKeylessPolicy(s)
					if err != nil {
						p.bad(fv, "%s: %v", path, err)
						return
					}
					t.Keyless = pol
					explicit[len(out)] = true
				}
			}, "sharded_by", "null_shard", "keyless", "default_shard")
		default:
			p.bad(v, "%s: write replicated, or {sharded_by: column}", path)
			continue
		}
		out = append(out, t)
	}
	return out
}

func (p *mapParser) overrides(n *yaml.Node) []Override {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.bad(n, "overrides: must be a mapping of team key to shard name")
		return nil
	}
	var out []Override
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if seen[k.Value] {
			p.bad(k, "overrides: team %q is listed twice", k.Value)
			continue
		}
		seen[k.Value] = true
		shard, ok := p.scalar(v, "overrides."+k.Value)
		if !ok {
			continue
		}
		out = append(out, Override{Key: k.Value, Shard: shard})
	}
	return out
}
