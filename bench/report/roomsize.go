package report

import (
	"fmt"

	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// goalRoomSizeRatio is issue #20's bound: a message in a room of 10,000
// local members costs at most this many times one in a 2-member room, in
// server CPU and in send p50.
const (
	goalRoomSizeRatio   = 2.0
	fullRoomSizeMembers = 10000
)

// roomSizeGoal is the goals table's row of scenario roomsize.
func roomSizeGoal(res *loadgen.Result) string {
	var small, large *loadgen.Phase
	for i, p := range res.Phases {
		if p.Scenario != "roomsize" {
			continue
		}
		switch {
		case paramFloat(p, "members") == 2:
			small = &res.Phases[i]
		default:
			large = &res.Phases[i]
		}
	}
	if small == nil || large == nil {
		return ""
	}
	cpuRatio, p50Ratio := extraFloat(*large, "cpu_ratio"), extraFloat(*large, "p50_ratio")
	members := int(paramFloat(*large, "members"))
	verdict := "met"
	if cpuRatio > goalRoomSizeRatio || p50Ratio > goalRoomSizeRatio || cpuRatio == 0 {
		verdict = "missed"
	}
	if members < fullRoomSizeMembers {
		verdict += fmt.Sprintf(" — **measured at %d members, smaller than the goal's 10,000**", members)
	}
	return fmt.Sprintf("| room size does not change the cost: 10,000 local members ≤ 2× the CPU and p50 of 2 | 2 → %d members: send p50 %.1f → %.1f ms (%.2f×), server CPU %.1f → %.1f ms per message (%.2f×) | %s |\n",
		members, small.Latency.P50, large.Latency.P50, p50Ratio,
		extraFloat(*small, "server_cpu_ms_per_event"), extraFloat(*large, "server_cpu_ms_per_event"), cpuRatio, verdict)
}
