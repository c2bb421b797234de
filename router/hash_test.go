package router

import (
	"math"
	"testing"
)

// Values computed by PostgreSQL 15 (x86-64) with the partition seed
// 8816678312871386365 (0x7A5B22367996DCFD) unless noted;
// TestPlacementAgreesWithPostgresHashPartitions checks many more against a
// live server.
func TestHashFunctionsMatchPostgresValues(t *testing.T) {
	uuid, err := ParseKey(KeyUUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		got  uint64
		want int64
	}{
		{"uuid_hash_extended(a0eebc99-…)", hashBytesExtended(uuid.s, hashPartitionSeed), 424513190990560493},
		{"hashint8extended(42)", hashInt8Extended(42, hashPartitionSeed), 7363975540656877951},
		{"hashint8extended(-5000000000)", hashInt8Extended(-5000000000, hashPartitionSeed), -4482100988868492312},
		{"hashtextextended('')", hashBytesExtended("", hashPartitionSeed), -5700645584453517373},
		{"hashtextextended('team-42')", hashBytesExtended("team-42", hashPartitionSeed), 6720690967657473133},
		{"hashtextextended(34 bytes)", hashBytesExtended("a much longer team name, 12+ bytes", hashPartitionSeed), 4559972710713246116},
		{"hashtextextended('abc', seed 0)", hashBytesExtended("abc", 0), -6747756470228489321},
	}
	for _, c := range cases {
		if int64(c.got) != c.want {
			t.Errorf("%s = %d, PostgreSQL says %d", c.name, int64(c.got), c.want)
		}
	}
	// satisfies_hash_partition(<2-way table>, 2, 0, 'a0eebc99-…'::uuid) is true.
	if got := ShardIndex(uuid, 2); got != 0 {
		t.Errorf("ShardIndex(a0eebc99-…, 2) = %d, PostgreSQL puts it in remainder 0", got)
	}
}

func TestHashCombine64UsesPostgresConstant(t *testing.T) {
	// hash_combine64(0, b) = b + 0x49a0f4dd15e5a8e3.
	if got := hashCombine64(0, 1); got != 0x49a0f4dd15e5a8e4 {
		t.Fatalf("hashCombine64(0, 1) = %#x", got)
	}
}

func TestBigintKeysInInt32RangeHashLikeInt4(t *testing.T) {
	for _, n := range []int64{0, 1, -1, 42, -42, math.MaxInt32, math.MinInt32} {
		if a, b := hashInt8Extended(n, hashPartitionSeed), hashUint32Extended(uint32(int32(n)), hashPartitionSeed); a != b {
			t.Errorf("%d: hashint8extended %d != hashint4extended %d", n, a, b)
		}
	}
	// Outside int32 the high half is folded in.
	if hashInt8Extended(1<<32, hashPartitionSeed) == hashInt8Extended(0, hashPartitionSeed) {
		t.Error("2^32 hashes like 0: high half not folded")
	}
}

func TestByteHashReadsEveryTailLength(t *testing.T) {
	// Every length up to two blocks gives a distinct hash for a distinct
	// last byte: no tail byte is dropped.
	buf := []byte("abcdefghijklmnopqrstuvwx")
	for n := 1; n <= len(buf); n++ {
		a := hashBytesExtended(buf[:n], hashPartitionSeed)
		c := append([]byte(nil), buf[:n]...)
		c[n-1] ^= 0x80
		if hashBytesExtended(c, hashPartitionSeed) == a {
			t.Errorf("length %d: last byte ignored", n)
		}
	}
}
