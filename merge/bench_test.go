package merge

import (
	"strconv"
	"testing"
)

// benchSources returns k sources of n rows each (an int8 key and a second
// int8 value, both text format), sorted by key.
func benchSources(k, n int) []*textSource {
	out := make([]*textSource, k)
	for i := range out {
		var rows [][]string
		for j := 0; j < n; j++ {
			rows = append(rows, []string{strconv.Itoa(j*k + i), strconv.Itoa(j)})
		}
		out[i] = newSource(rows...)
	}
	return out
}

func benchRun(b *testing.B, sql string, rd []byte, k, n int) {
	p, err := Analyze(sql)
	if err != nil || p == nil {
		b.Fatal(p, err)
	}
	srcs := benchSources(k, n)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		ss := make([]Source, k)
		for i, s := range srcs {
			s.pulled = 0
			ss[i] = s
		}
		if _, err := p.Run(nil, nil, rd, nil, ss, func([]byte) error { return nil }, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*k*n), "ns/row")
}

// BenchmarkOrderMerge is the streaming k-way merge of 4 shards.
func BenchmarkOrderMerge(b *testing.B) {
	benchRun(b, "SELECT k, v FROM t ORDER BY k", desc(0, oidInt8, oidInt8), 4, 25000)
}

// BenchmarkGroupMerge combines 4 shards' partial groups.
func BenchmarkGroupMerge(b *testing.B) {
	benchRun(b, "SELECT k, count(*) FROM t GROUP BY k", desc(0, oidInt8, oidInt8), 4, 25000)
}
