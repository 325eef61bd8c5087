package myelin

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// RuntimeConfig holds settings of the Go runtime of the process.
type RuntimeConfig struct {
	// MemoryLimit is the Go runtime's soft memory limit
	// (debug.SetMemoryLimit): near it the collector works harder and
	// returns freed memory to the operating system sooner, instead of
	// letting the heap grow to GOGC's target (three times the live data
	// at Myelin's GOGC of 200). "auto" (the default) is AutoMemoryLimit
	// for a process that runs every service (the all-in-one shape) and no
	// limit for one that runs some (the split shape, where each
	// container's limit is the operator's: set it, or GOMEMLIMIT, to
	// about 80 % of that); "off" is no limit; otherwise a size such as
	// "256MiB", "1GiB" or a number of bytes. The GOMEMLIMIT environment
	// variable, when set, wins. A soft limit never fails an allocation:
	// a process whose live data needs more goes over it, the collector
	// then using at most about half the CPU.
	MemoryLimit string `yaml:"memory_limit"`
}

// AutoMemoryLimit is the all-in-one shape's soft memory limit: under
// make bench's load the live heap stayed under 60 MiB (issue #20), and
// the process's resident set is this plus about 40 MiB of the binary's
// mapped code and data.
const AutoMemoryLimit = 100 << 20

// memoryLimit is the limit for a process running every service or not
// (0: none).
func (c RuntimeConfig) memoryLimit(allInOne bool) (int64, error) {
	switch s := strings.TrimSpace(c.MemoryLimit); s {
	case "", "auto":
		if allInOne {
			return AutoMemoryLimit, nil
		}
		return 0, nil
	case "off":
		return 0, nil
	default:
		return parseSize(s)
	}
}

// parseSize reads "123", "64KiB", "100MiB", "2GiB" (or KB/MB/GB, taken
// as the same powers of two, as GOMEMLIMIT does not take them).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (want auto, off, or e.g. 256MiB)", s)
	}
	return n * mult, nil
}

// ApplyMemoryLimit sets the soft memory limit of runtime.memory_limit for
// a process running targets, unless GOMEMLIMIT is set. It returns the limit
// in force (0: none) and where it came from.
func ApplyMemoryLimit(cfg Config, targets []string) (int64, string, error) {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT", nil // reads it
	}
	limit, err := cfg.Runtime.memoryLimit(len(targets) >= len(modules))
	if err != nil {
		return 0, "", err
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	return limit, "runtime.memory_limit", nil
}
