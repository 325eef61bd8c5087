package loadgen

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress prints one live line per phase: it rewrites the line with \r
// every half second, then ends it with the phase's result.
type progress struct {
	w    io.Writer
	mu   sync.Mutex
	stop chan struct{}
	done chan struct{}
}

// startProgress shows name's counters until the returned func is called.
// total > 0 shows "n/total"; limit > 0 shows the remaining time.
func startProgress(w io.Writer, name string, rec *Recorder, total int, limit time.Duration) func() {
	if w == nil {
		return func() {}
	}
	p := &progress{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	live := isTerminal(w) // into a file or pipe, only the final line
	start := time.Now()
	line := func(final bool) {
		ok, failed := rec.Count()
		el := time.Since(start)
		rate := float64(ok) / max(el.Seconds(), 1e-9)
		s := fmt.Sprintf("\r%-44s %7d ok", name, ok)
		if total > 0 {
			s += fmt.Sprintf("/%d", total)
		}
		s += fmt.Sprintf("  %8.1f/s  %d errors  %5.1fs", rate, failed, el.Seconds())
		if limit > 0 && !final {
			s += fmt.Sprintf(" of %.0fs", limit.Seconds())
		}
		if live {
			s += "\033[K"
		} else {
			s = strings.TrimPrefix(s, "\r")
		}
		if final {
			s += "\n"
		}
		p.mu.Lock()
		fmt.Fprint(p.w, s)
		p.mu.Unlock()
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				line(true)
				return
			case <-t.C:
				if live {
					line(false)
				}
			}
		}
	}()
	return func() { close(p.stop); <-p.done }
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
