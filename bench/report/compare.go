package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// Comparison is one `make bench-compare` run: the same portable scenarios
// of the load generator against Myelin and then against another
// homeserver (Dendrite), one after the other on the same PostgreSQL
// cluster. It is written as JSON under <results>/compare/.
type Comparison struct {
	Started time.Time `json:"started"`
	// Meta: commit, the other server's version, PostgreSQL durability,
	// the machine's load average around each run.
	Meta map[string]string `json:"meta"`
	Runs []ComparedRun     `json:"runs"`
}

// ComparedRun is one server's result in a comparison.
type ComparedRun struct {
	// Server is the server's name ("myelin", "dendrite"); its process
	// carries the same name in Result.Memory.
	Server string `json:"server"`
	// Config describes how the server was configured (environment or
	// configuration file of the run).
	Config string          `json:"config"`
	Result *loadgen.Result `json:"result"`
}

// ComparisonDir is where comparisons go under a results directory.
const ComparisonDir = "compare"

// LatestComparison reads the newest comparison under resultsDir's
// ComparisonDir; nil (and no error) when there is none.
func LatestComparison(resultsDir string) (*Comparison, string, error) {
	matches, _ := filepath.Glob(filepath.Join(resultsDir, ComparisonDir, "*.json"))
	if len(matches) == 0 {
		return nil, "", nil
	}
	slices.Sort(matches) // <date>-<time>-<commit>.json: the newest last
	path := matches[len(matches)-1]
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	var c Comparison
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return &c, path, nil
}

// ratioRow is one measure of both servers.
type ratioRow struct {
	what        string
	mine, other float64
	unit        string
	lowerBetter bool
}

func (r ratioRow) cells() (string, string, string, string) {
	f := func(v float64) string {
		if r.unit == "bytes" {
			return bytesStr(v)
		}
		return fmt.Sprintf("%.1f %s", v, r.unit)
	}
	if r.other == 0 {
		return f(r.mine), f(r.other), "n/a", ""
	}
	ratio := r.mine / r.other
	better := "Myelin"
	if (r.lowerBetter && ratio > 1) || (!r.lowerBetter && ratio < 1) {
		better = "Dendrite"
	}
	if ratio == 1 {
		better = "same"
	}
	return f(r.mine), f(r.other), fmt.Sprintf("%.2f", ratio), better
}

// comparisonRows lists the measures both runs have: serial send, each
// sweep step's throughput, latencies and CPU per event, memory, and any
// other measured (non-set-up) phase both have, such as a room-size
// scenario's.
func comparisonRows(a, b *loadgen.Result) []ratioRow {
	var rows []ratioRow
	add := func(what string, x, y float64, unit string, lower bool) {
		if x > 0 || y > 0 {
			rows = append(rows, ratioRow{what, x, y, unit, lower})
		}
	}
	covered := map[string]bool{}
	if p, q := phase(a, "serial", "send"), phase(b, "serial", "send"); p != nil && q != nil {
		add("serial send p50", p.Latency.P50, q.Latency.P50, "ms", true)
		add("serial send p99", p.Latency.P99, q.Latency.P99, "ms", true)
		covered["serial/send"] = true
	}
	sa, sb := phases(a, "throughput", "send"), phases(b, "throughput", "send")
	da, db := phases(a, "send_to_sync", "delivery"), phases(b, "send_to_sync", "delivery")
	for _, p := range sa {
		n := int(paramFloat(p, "senders"))
		q := findSenders(sb, n)
		if q == nil {
			continue
		}
		add(fmt.Sprintf("closed loop N=%d: events/s", n), p.Throughput, q.Throughput, "/s", false)
		add(fmt.Sprintf("closed loop N=%d: send p50", n), p.Latency.P50, q.Latency.P50, "ms", true)
		add(fmt.Sprintf("closed loop N=%d: send p99", n), p.Latency.P99, q.Latency.P99, "ms", true)
		if x, y := findSenders(da, n), findSenders(db, n); x != nil && y != nil {
			add(fmt.Sprintf("closed loop N=%d: send→/sync delivery p99", n), x.Latency.P99, y.Latency.P99, "ms", true)
		}
		add(fmt.Sprintf("closed loop N=%d: server + PostgreSQL CPU per event", n),
			extraFloat(p, "server_cpu_ms_per_event"), extraFloat(*q, "server_cpu_ms_per_event"), "ms", true)
		if _, ok := p.Extra["db_statements_per_event"]; ok {
			add(fmt.Sprintf("closed loop N=%d: SQL statements per event", n),
				extraFloat(p, "db_statements_per_event"), extraFloat(*q, "db_statements_per_event"), "", true)
		}
	}
	covered["throughput/send"], covered["send_to_sync/delivery"] = true, true
	for _, p := range a.Phases {
		key := p.Scenario + "/" + p.Name
		if covered[key] || strings.HasPrefix(p.Name, "setup/") {
			continue
		}
		for _, q := range b.Phases {
			if q.Scenario == p.Scenario && q.Name == p.Name && paramStr(q.Params) == paramStr(p.Params) {
				what := fmt.Sprintf("%s %s %s", p.Scenario, p.Name, paramStr(p.Params))
				add(what+": p50", p.Latency.P50, q.Latency.P50, "ms", true)
				if c, d := extraFloat(p, "server_cpu_ms_per_event"), extraFloat(q, "server_cpu_ms_per_event"); c > 0 && d > 0 {
					add(what+": server + PostgreSQL CPU per event", c, d, "ms", true)
				}
				break
			}
		}
	}
	return rows
}

// serverMemory is the server process's RSS at the idle sample, at the
// last sample (after the last scenario) and its peak.
func serverMemory(res *loadgen.Result, server string) (idle, last, peak float64) {
	for i, m := range res.Memory {
		p := proc(&res.Memory[i], server)
		if p == nil {
			continue
		}
		if m.Label == "idle" {
			idle = float64(p.RSSBytes)
		}
		last = float64(p.RSSBytes)
		peak = max(peak, float64(p.PeakRSSBytes))
	}
	return idle, last, peak
}

// writeComparison writes the side-by-side section and its plots.
func writeComparison(w func(string, ...any), c *Comparison, path string, plotDir string, rel func(string) string) error {
	var mine, other *ComparedRun
	for i := range c.Runs {
		if c.Runs[i].Server == "myelin" {
			mine = &c.Runs[i]
		} else if other == nil {
			other = &c.Runs[i]
		}
	}
	if mine == nil || other == nil || mine.Result == nil || other.Result == nil {
		return nil
	}
	a, b := mine.Result, other.Result
	key := other.Server // its process's name in the results, and its meta keys' prefix
	name := strings.ToUpper(key[:1]) + key[1:]
	w("## Side by side with %s (`make bench-compare`)\n\n", name)
	w("Run %s, commit `%s`, %s %s; results in [`%s`](%s). ", c.Started.Format("2006-01-02 15:04 UTC"), c.Meta["commit"],
		name, c.Meta[key+"_version"], filepath.Base(path), rel(path))
	w("Both servers ran one after the other on one PostgreSQL cluster (`%s`), each on a fresh database, driven by the same load generator scenarios (%s); rate limits and federation off on both, %s's pool keeps its connections (`max_idle_conns` = `max_open_conns`, `cmd/myelin-bench/dendrite.yaml.tmpl`). Load average (1 min) before → after each run: Myelin %s, %s %s.\n\n",
		c.Meta["postgres_durability"], strings.Join(a.Options.Scenarios, ", "), name, c.Meta["myelin_loadavg"], name, c.Meta[key+"_loadavg"])
	if n := c.Meta["note"]; n != "" {
		w("> %s\n\n", n)
	}
	w("Ratio = Myelin / %s; \"better\" names the server the measure favours.\n\n", name)
	w("| measure | Myelin | %s | ratio | better |\n| --- | ---: | ---: | ---: | --- |\n", name)
	rows := comparisonRows(a, b)
	ia, la, pa := serverMemory(a, "myelin")
	ib, lb, pb := serverMemory(b, key)
	rows = append(rows,
		ratioRow{"server RSS idle after start", ia, ib, "bytes", true},
		ratioRow{"server RSS after the run", la, lb, "bytes", true},
		ratioRow{"server peak RSS (VmHWM)", pa, pb, "bytes", true})
	for _, r := range rows {
		x, y, ratio, better := r.cells()
		w("| %s | %s | %s | %s | %s |\n", r.what, x, y, ratio, better)
	}
	w("\n")

	sa, sb := phases(a, "throughput", "send"), phases(b, "throughput", "send")
	if len(sa) == 0 || len(sb) == 0 {
		return nil
	}
	tp := func(p loadgen.Phase) float64 { return p.Throughput }
	p99 := func(p loadgen.Phase) float64 { return p.Latency.P99 }
	tpPlot, latPlot := filepath.Join(plotDir, "compare-throughput.svg"), filepath.Join(plotDir, "compare-latency.svg")
	if err := writePlot(tpPlot, "Closed-loop throughput", "senders (N)", "events/s",
		sweepSeries("Myelin", sa, tp), sweepSeries(name, sb, tp)); err != nil {
		return err
	}
	da, db := phases(a, "send_to_sync", "delivery"), phases(b, "send_to_sync", "delivery")
	if err := writePlot(latPlot, "Send p99 and send-to-sync delivery p99", "senders (N)", "ms",
		sweepSeries("Myelin send p99", sa, p99), sweepSeries(name+" send p99", sb, p99),
		sweepSeries("Myelin delivery p99", da, p99), sweepSeries(name+" delivery p99", db, p99)); err != nil {
		return err
	}
	w("![throughput, Myelin and %s](%s)\n![latency, Myelin and %s](%s)\n\n", name, rel(tpPlot), name, rel(latPlot))
	return nil
}
