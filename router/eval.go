package router

import (
	"errors"
	"strconv"
)

// env is what evaluating a plan needs from one execution: the key type and
// the Bind parameters.
type env struct {
	kt      KeyType
	params  [][]byte
	formats []int16
	oids    []uint32
}

func (e *env) binary(i int) bool {
	switch {
	case len(e.formats) == 0:
		return false
	case len(e.formats) == 1:
		return e.formats[0] == 1
	case i < len(e.formats):
		return e.formats[i] == 1
	}
	return false
}

func (e *env) oid(i int) uint32 {
	if i < len(e.oids) {
		return e.oids[i]
	}
	return 0
}

// keySet is a set of keys in insertion order, plus whether NULL is among
// the values. Past smallSet keys it keeps an index, so large ANY arrays
// stay linear.
type keySet struct {
	keys []Key
	idx  map[Key]struct{}
	null bool
}

const smallSet = 16

func (s *keySet) add(k Key) {
	if s.has(k) {
		return
	}
	s.keys = append(s.keys, k)
	switch {
	case s.idx != nil:
		s.idx[k] = struct{}{}
	case len(s.keys) > smallSet:
		s.idx = make(map[Key]struct{}, 2*len(s.keys))
		for _, x := range s.keys {
			s.idx[x] = struct{}{}
		}
	}
}

func (s *keySet) union(o keySet) {
	for _, k := range o.keys {
		s.add(k)
	}
	s.null = s.null || o.null
}

func (s keySet) has(k Key) bool {
	if s.idx != nil {
		_, ok := s.idx[k]
		return ok
	}
	for _, x := range s.keys {
		if x == k {
			return true
		}
	}
	return false
}

func (s keySet) empty() bool { return len(s.keys) == 0 && !s.null }

// evalRef returns the keys a table reference's rows are restricted to, or
// ok=false when they are not restricted.
func (e *env) evalRef(r *tableRef) (keySet, bool, error) {
	if r.cons == nil {
		return keySet{}, false, nil
	}
	ks, ok, err := e.eval(r.cons)
	if err != nil {
		return keySet{}, false, err
	}
	for _, v := range r.assign {
		vs, known, err := e.value(v)
		if err != nil {
			return keySet{}, false, err
		}
		if !known {
			ok = false
		}
		ks.union(vs)
	}
	if r.assignUnknown {
		ok = false
	}
	return ks, ok, nil
}

// eval evaluates a constraint: AND intersects the restricting children
// (their union if the intersection is empty: no row matches, and any of
// those shards answers correctly), OR unites them (all must restrict).
func (e *env) eval(c *cons) (keySet, bool, error) {
	switch c.op {
	case opLeaf:
		var out keySet
		ok := true
		for _, v := range c.vals {
			vs, known, err := e.value(v)
			if err != nil {
				return keySet{}, false, err
			}
			if !known {
				ok = false
			}
			out.union(vs)
		}
		return out, ok, nil
	case opAnd:
		var inter, union keySet
		have := false
		for _, k := range c.kids {
			ks, ok, err := e.eval(k)
			if err != nil {
				return keySet{}, false, err
			}
			if !ok {
				continue
			}
			union.union(ks)
			if !have {
				inter, have = ks, true
				continue
			}
			var next keySet
			for _, x := range inter.keys {
				if ks.has(x) {
					next.add(x)
				}
			}
			next.null = inter.null && ks.null
			inter = next
		}
		if !have {
			return keySet{}, false, nil
		}
		if inter.empty() {
			return union, true, nil
		}
		return inter, true, nil
	case opOr:
		var out keySet
		ok := true
		for _, k := range c.kids {
			ks, kok, err := e.eval(k)
			if err != nil {
				return keySet{}, false, err
			}
			if !kok {
				ok = false
			}
			out.union(ks)
		}
		if !ok {
			return keySet{}, false, nil
		}
		return out, true, nil
	}
	return keySet{}, false, nil
}

// value reads one value source. known is false when the value cannot be
// read (a parameter that was not supplied).
func (e *env) value(v valueRef) (keySet, bool, error) {
	switch v.kind {
	case vKey:
		if v.err != nil {
			return keySet{}, false, v.err
		}
		return keySet{keys: []Key{v.key}}, true, nil
	case vNull:
		return keySet{null: v.nullRows}, true, nil
	case vParam:
		if v.param >= len(e.params) {
			return keySet{}, false, nil
		}
		raw := e.params[v.param]
		if raw == nil {
			return keySet{null: v.nullRows}, true, nil
		}
		oid := e.oid(v.param)
		if oid == 0 {
			oid = v.cast
		}
		if oid == 0 {
			oid = keyOID(e.kt)
		}
		k, err := decodeKey(raw, e.binary(v.param), oid, e.kt)
		if err != nil {
			return keySet{}, false, withDetail(err, paramDetail(v.param))
		}
		return keySet{keys: []Key{k}}, true, nil
	case vParamArray:
		if v.param >= len(e.params) {
			return keySet{}, false, nil
		}
		raw := e.params[v.param]
		if raw == nil {
			return keySet{}, true, nil // = ANY(NULL) matches nothing
		}
		elem := elemOID(e.oid(v.param))
		if elem == 0 {
			elem = v.cast
		}
		if elem == 0 {
			elem = keyOID(e.kt)
		}
		var (
			elems []arrayElem
			err   error
		)
		bin := e.binary(v.param)
		if bin {
			var hdr uint32
			hdr, elems, err = parseArrayBinary(raw)
			if hdr != 0 {
				elem = hdr
			}
		} else {
			elems, err = parseArrayText(string(raw))
		}
		if errors.Is(err, errArrayTooLarge) {
			return keySet{}, false, nil
		}
		if err != nil {
			return keySet{}, false, withDetail(err, paramDetail(v.param))
		}
		var out keySet
		for _, el := range elems {
			if el.null {
				continue // = ANY matches no NULL
			}
			k, err := decodeKey(el.raw, bin, elem, e.kt)
			if err != nil {
				return keySet{}, false, withDetail(err, paramDetail(v.param))
			}
			out.add(k)
		}
		return out, true, nil
	}
	return keySet{}, false, nil
}

func paramDetail(i int) string {
	return "In Bind parameter $" + strconv.Itoa(i+1) + "."
}

// Keys returns the distinct team keys that place the statement's rows, for
// one execution's Bind parameters (formats and OIDs as in StmtInfo): the
// keys each sharded table reference is restricted to (NULL keys are left
// out). A table without a usable key contributes nothing. Errors are
// *pgerr.Error (22P02, 22003) for malformed keys.
func (p *StmtPlan) Keys(params [][]byte, formats []int16, paramOIDs []uint32) ([]Key, error) {
	e := &env{kt: p.c.m.KeyType, params: params, formats: formats, oids: paramOIDs}
	var out keySet
	for _, r := range p.refs {
		ks, ok, err := e.evalRef(r)
		if err != nil {
			return nil, err
		}
		if ok {
			for _, k := range ks.keys {
				out.add(k)
			}
		}
	}
	return out.keys, nil
}

// ReadOnly reports whether the statement only reads (see Decision.ReadOnly).
func (p *StmtPlan) ReadOnly() bool { return p.readOnly }

// Tables returns the tables the statement names (catalogs and CTEs left
// out), in order of appearance, possibly repeated.
func (p *StmtPlan) Tables() []string { return append([]string(nil), p.tables...) }
