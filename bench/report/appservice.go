package report

import (
	"fmt"

	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// Issue #17's goals: events delivered to one appservice.
const (
	goalAppserviceEventsPerS = 1000.0
	goalAppserviceP99Ms      = 100.0
)

// appserviceGoals writes the goal rows of the appservice scenario (none
// when it did not run).
func appserviceGoals(res *loadgen.Result, w func(format string, args ...any)) {
	if d := phase(res, "appservice", "backlog/drain"); d != nil {
		w("| appservice: ≥ 1,000 events/s delivered to one appservice | backlog of %v drained at %.0f events/s (%v transactions), %s server CPU per event | %s |\n",
			d.Params["backlog"], d.Throughput, d.Extra["transactions"], msStr(d, "server_cpu_ms_per_event"),
			versus(d.Throughput, goalAppserviceEventsPerS, true, "events/s"))
	}
	if d := phase(res, "appservice", "under_load/delivery"); d != nil {
		serial := ""
		if s := phase(res, "appservice", "serial"); s != nil {
			serial = fmt.Sprintf("; one at a time: p50 %.1f ms, p99 %.1f ms", s.Latency.P50, s.Latency.P99)
		}
		w("| appservice: p99 from commit to the appservice's 200 < 100 ms | under load (%v senders, %.0f events/s delivered), from the send's answer: p50 %.1f ms, p99 %.1f ms (from its request, the send's own time included: p50 %.1f ms, p99 %.1f ms)%s | %s |\n",
			d.Params["senders"], d.Throughput, d.Latency.P50, d.Latency.P99, extraFloat(*d, "from_request_p50_ms"), extraFloat(*d, "from_request_p99_ms"),
			serial, versus(d.Latency.P99, goalAppserviceP99Ms, false, "ms"))
	}
}

func msStr(p *loadgen.Phase, key string) string {
	if _, ok := p.Extra[key]; !ok {
		return "unmeasured"
	}
	return fmt.Sprintf("%.2f ms", extraFloat(*p, key))
}
