package router

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/pgtest"
)

// placementCase is one key type checked against a real PostgreSQL.
type placementCase struct {
	name    string // table prefix
	sqlType string
	keyType KeyType
	hashFn  string // PostgreSQL's extended hash function for the type
	keys    []string
}

// TestPlacementAgreesWithPostgresHashPartitions proves that ShardIndex is
// PostgreSQL's hash partitioning: for uuid, bigint, int4 and text keys and
// moduli 2, 3 and 5, every key lands in the partition whose remainder is
// our shard index, satisfies_hash_partition agrees, and our raw extended
// hash equals PostgreSQL's.
func TestPlacementAgreesWithPostgresHashPartitions(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	seed := uint64(time.Now().UnixNano())
	t.Logf("random keys from seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x6272))
	const perType = 300

	cases := []placementCase{
		{name: "u", sqlType: "uuid", keyType: KeyUUID, hashFn: "uuid_hash_extended"},
		{name: "b", sqlType: "bigint", keyType: KeyBigint, hashFn: "hashint8extended"},
		{name: "i", sqlType: "integer", keyType: KeyBigint, hashFn: "hashint4extended"},
		{name: "t", sqlType: "text", keyType: KeyText, hashFn: "hashtextextended"},
	}
	for i := range cases {
		c := &cases[i]
		switch c.name {
		case "u":
			c.keys = append(c.keys, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")
			for len(c.keys) < perType {
				var u [16]byte
				for j := range u {
					u[j] = byte(rng.UintN(256))
				}
				c.keys = append(c.keys, UUIDKey(u).String())
			}
		case "b":
			for _, n := range []int64{0, 1, -1, math.MaxInt32, math.MinInt32, math.MaxInt32 + 1, math.MinInt32 - 1, math.MaxInt64, math.MinInt64} {
				c.keys = append(c.keys, strconv.FormatInt(n, 10))
			}
			for len(c.keys) < perType {
				n := int64(rng.Uint64())
				if rng.IntN(3) == 0 {
					n = rng.Int64N(2000) - 1000
				}
				c.keys = append(c.keys, strconv.FormatInt(n, 10))
			}
		case "i":
			for _, n := range []int64{0, 1, -1, math.MaxInt32, math.MinInt32} {
				c.keys = append(c.keys, strconv.FormatInt(n, 10))
			}
			for len(c.keys) < perType {
				c.keys = append(c.keys, strconv.FormatInt(int64(int32(rng.Uint32())), 10))
			}
		case "t":
			c.keys = append(c.keys, "", "a", "abc", "team-42", "Ünïcödé", "日本語のチーム", "🚀 rocket", "it's", strings.Repeat("x", 100))
			for len(c.keys) < perType {
				c.keys = append(c.keys, randomText(rng))
			}
		}
	}

	moduli := []int{2, 3, 5}
	var sql strings.Builder
	for _, c := range cases {
		for _, n := range moduli {
			parent := fmt.Sprintf("p_%s_%d", c.name, n)
			fmt.Fprintf(&sql, "CREATE TABLE %s (i int, k %s) PARTITION BY HASH (k);\n", parent, c.sqlType)
			for r := 0; r < n; r++ {
				fmt.Fprintf(&sql, "CREATE TABLE %s_%d PARTITION OF %s FOR VALUES WITH (MODULUS %d, REMAINDER %d);\n", parent, r, parent, n, r)
			}
			fmt.Fprintf(&sql, "INSERT INTO %s VALUES %s;\n", parent, valuesList(c, nil))
		}
	}
	if _, err := srv.Primary.Exec(ctx, "postgres", sql.String()); err != nil {
		t.Fatalf("create partitioned tables: %v", err)
	}

	for _, c := range cases {
		keys := make([]Key, len(c.keys))
		for i, s := range c.keys {
			k, err := ParseKey(c.keyType, s)
			if err != nil {
				t.Fatalf("%s key %q: %v", c.sqlType, s, err)
			}
			keys[i] = k
		}

		// The raw extended hash, before hash_combine64.
		out, err := srv.Primary.Exec(ctx, "postgres", fmt.Sprintf(
			"SELECT i, %s(k, %d) FROM (VALUES %s) v(i, k) ORDER BY i", c.hashFn, int64(hashPartitionSeed), valuesList(c, nil)))
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range rows(t, out, len(keys)) {
			i := atoi(t, row[0])
			want, err := strconv.ParseInt(row[1], 10, 64)
			if err != nil {
				t.Fatalf("%s hash %q: %v", c.hashFn, row[1], err)
			}
			var got uint64
			if c.keyType == KeyBigint {
				got = hashInt8Extended(keys[i].n, hashPartitionSeed)
			} else {
				got = hashBytesExtended(keys[i].s, hashPartitionSeed)
			}
			if got != uint64(want) {
				t.Errorf("%s(%q) = %d in PostgreSQL, %d here", c.hashFn, c.keys[i], want, int64(got))
			}
		}

		for _, n := range moduli {
			parent := fmt.Sprintf("p_%s_%d", c.name, n)
			// Where PostgreSQL routed each row.
			out, err := srv.Primary.Exec(ctx, "postgres", fmt.Sprintf("SELECT i, tableoid::regclass FROM %s ORDER BY i", parent))
			if err != nil {
				t.Fatal(err)
			}
			mismatches := 0
			for _, row := range rows(t, out, len(keys)) {
				i := atoi(t, row[0])
				want := atoi(t, row[1][strings.LastIndexByte(row[1], '_')+1:])
				if got := ShardIndex(keys[i], n); got != want {
					mismatches++
					t.Errorf("%s key %q, modulus %d: PostgreSQL partition remainder %d, ShardIndex %d", c.sqlType, c.keys[i], n, want, got)
				}
			}
			// satisfies_hash_partition with our remainders.
			rem := make([]int, len(keys))
			for i, k := range keys {
				rem[i] = ShardIndex(k, n)
			}
			out, err = srv.Primary.Exec(ctx, "postgres", fmt.Sprintf(
				"SELECT i FROM (VALUES %s) v(i, k, r) WHERE NOT satisfies_hash_partition('%s'::regclass, %d, r, k) ORDER BY i",
				valuesList(c, rem), parent, n))
			if err != nil {
				t.Fatal(err)
			}
			if out != "" {
				for _, line := range strings.Split(out, "\n") {
					i := atoi(t, line)
					t.Errorf("%s key %q, modulus %d: satisfies_hash_partition(remainder %d) is false", c.sqlType, c.keys[i], n, rem[i])
				}
			}
			if mismatches == 0 {
				t.Logf("%s, modulus %d: %d keys agree", c.sqlType, n, len(keys))
			}
		}
	}
}

// valuesList renders (i, key[, remainder]) rows as SQL literals.
func valuesList(c placementCase, rem []int) string {
	var b strings.Builder
	for i, k := range c.keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "(%d, '%s'::%s", i, strings.ReplaceAll(k, "'", "''"), c.sqlType)
		if rem != nil {
			fmt.Fprintf(&b, ", %d", rem[i])
		}
		b.WriteString(")")
	}
	return b.String()
}

func rows(t *testing.T, out string, want int) [][]string {
	t.Helper()
	lines := strings.Split(out, "\n")
	if len(lines) != want {
		t.Fatalf("got %d rows, want %d:\n%s", len(lines), want, out)
	}
	rs := make([][]string, len(lines))
	for i, l := range lines {
		rs[i] = strings.SplitN(l, "|", 2)
		if len(rs[i]) != 2 {
			t.Fatalf("bad row %q", l)
		}
	}
	return rs
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// randomText returns a random UTF-8 string without NUL: ASCII, quotes,
// separators and multi-byte runes.
func randomText(rng *rand.Rand) string {
	alphabet := []rune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_|,'\"\\{}()éßøЖ中文日本🙂🚀\t")
	n := rng.IntN(40)
	var b strings.Builder
	for range n {
		b.WriteRune(alphabet[rng.IntN(len(alphabet))])
	}
	return b.String()
}
