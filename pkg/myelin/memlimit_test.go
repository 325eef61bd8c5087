package myelin

import (
	"strings"
	"testing"
)

func TestMemoryLimitSetting(t *testing.T) {
	for _, tc := range []struct {
		value    string
		allInOne bool
		want     int64
	}{
		{"auto", true, AutoMemoryLimit},
		{"auto", false, 0},
		{"", true, AutoMemoryLimit},
		{"off", true, 0},
		{"256MiB", false, 256 << 20},
		{"1GiB", true, 1 << 30},
		{"512MB", true, 512 << 20},
		{"64KiB", true, 64 << 10},
		{"1048576", true, 1 << 20},
	} {
		got, err := RuntimeConfig{MemoryLimit: tc.value}.memoryLimit(tc.allInOne)
		if err != nil || got != tc.want {
			t.Errorf("%q (all-in-one %v): %d, %v; want %d", tc.value, tc.allInOne, got, err, tc.want)
		}
	}
	for _, bad := range []string{"lots", "-5MiB", "0", "1.5GiB", "MiB", "99999999999GiB"} {
		if _, err := (RuntimeConfig{MemoryLimit: bad}).memoryLimit(true); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMemoryLimitValidated(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.Runtime.MemoryLimit != "auto" {
		t.Fatalf("default runtime.memory_limit %q, want auto", cfg.Runtime.MemoryLimit)
	}
	cfg.Runtime.MemoryLimit = "a lot"
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "runtime.memory_limit") {
		t.Fatalf("Validate: %v, want a runtime.memory_limit error", err)
	}
}

func TestApplyMemoryLimitAllInOne(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	cfg := DefaultConfig()
	cfg.Runtime.MemoryLimit = "off" // the test process keeps no limit
	all, err := ParseTargets(TargetAll)
	if err != nil {
		t.Fatal(err)
	}
	if limit, from, err := ApplyMemoryLimit(cfg, all); err != nil || limit != 0 || from != "runtime.memory_limit" {
		t.Fatalf("off: %d from %q, %v", limit, from, err)
	}
	cfg.Runtime.MemoryLimit = "auto"
	some, err := ParseTargets(TargetRoomServer)
	if err != nil {
		t.Fatal(err)
	}
	if limit, _, err := ApplyMemoryLimit(cfg, some); err != nil || limit != 0 {
		t.Fatalf("auto for a split process: %d, %v; want no limit", limit, err)
	}
}
