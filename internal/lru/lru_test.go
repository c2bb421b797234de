package lru

import "testing"

func TestTheLeastRecentlyUsedEntryIsDroppedFirst(t *testing.T) {
	c := New[string, int](2)
	c.Add("a", 1)
	c.Add("b", 2)
	if _, ok := c.Get("a"); !ok { // a is now more recent than b
		t.Fatal("a missing")
	}
	c.Add("c", 3)
	if _, ok := c.Get("b"); ok {
		t.Fatal("b should have been evicted")
	}
	if v, ok := c.Get("a"); !ok || v != 1 {
		t.Fatalf("a = %d, %v", v, ok)
	}
	if c.Len() != 2 {
		t.Fatalf("len %d", c.Len())
	}
}

func TestAddKeepsTheValueAlreadyCached(t *testing.T) {
	c := New[string, int](4)
	if got := c.Add("k", 1); got != 1 {
		t.Fatalf("first add returned %d", got)
	}
	if got := c.Add("k", 2); got != 1 {
		t.Fatalf("second add returned %d, want the cached 1", got)
	}
}

func TestAZeroSizedCacheStoresNothing(t *testing.T) {
	c := New[string, int](0)
	if got := c.Add("k", 7); got != 7 {
		t.Fatalf("got %d", got)
	}
	if _, ok := c.Get("k"); ok || c.Len() != 0 {
		t.Fatal("zero-sized cache stored an entry")
	}
}
