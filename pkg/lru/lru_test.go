package lru

import (
	"fmt"
	"testing"
)

func TestCountBound(t *testing.T) {
	c := New[int, string](3)
	for i := range 5 {
		c.Put(i, fmt.Sprint(i))
	}
	if c.Len() != 3 {
		t.Fatalf("len %d, want 3", c.Len())
	}
	for i := range 2 {
		if _, ok := c.Get(i); ok {
			t.Fatalf("%d should have been dropped (least recently used)", i)
		}
	}
	c.Get(2) // 2 is now the most recent: 3 goes next
	c.Put(5, "5")
	if _, ok := c.Get(3); ok {
		t.Fatal("3 should have been dropped")
	}
	if v, ok := c.Get(2); !ok || v != "2" {
		t.Fatalf("2: %q %v", v, ok)
	}
	c.Remove(2)
	if _, ok := c.Get(2); ok || c.Len() != 2 {
		t.Fatalf("2 after Remove: present %v, len %d", ok, c.Len())
	}
}

func TestWeightBound(t *testing.T) {
	c := NewWeighted[string, []int](100, 10, func(v []int) int { return len(v) })
	c.Put("a", make([]int, 4))
	c.Put("b", make([]int, 4))
	if c.Weight() != 8 || c.Len() != 2 {
		t.Fatalf("weight %d len %d, want 8 and 2", c.Weight(), c.Len())
	}
	c.Put("c", make([]int, 4)) // 12 > 10: "a" goes
	if _, ok := c.Get("a"); ok {
		t.Fatal("a should have been dropped by weight")
	}
	if c.Weight() != 8 {
		t.Fatalf("weight %d, want 8", c.Weight())
	}
	c.Put("b", make([]int, 1)) // replaced: its weight changes
	if c.Weight() != 5 {
		t.Fatalf("weight after replacing b %d, want 5", c.Weight())
	}
	// One value heavier than the bound is kept alone (the newest entry
	// always stays), and pushes every other out.
	c.Put("big", make([]int, 50))
	if c.Len() != 1 || c.Weight() != 50 {
		t.Fatalf("len %d weight %d, want the big entry alone", c.Len(), c.Weight())
	}
	c.Remove("big")
	if c.Len() != 0 || c.Weight() != 0 {
		t.Fatalf("len %d weight %d after Remove, want 0 0", c.Len(), c.Weight())
	}
}
