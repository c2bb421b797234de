package merge

// HiddenColumns is how many trailing columns ShardSQL has beyond the
// client's: sort and grouping expressions that are not output columns,
// and avg's counts. A Bind of ShardSQL with one result format per column
// has the client's count plus these.
func (p *Plan) HiddenColumns() int { return p.hidden() }
