package fedsender

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// stats are the sender's Prometheus metrics: counters of what it sent, and
// per destination (read from its schema at each scrape, so every replica
// reports the same queues) the queue depth, the age of the oldest waiting
// row and the backoff state.
type stats struct {
	transactions *prometheus.CounterVec
	pdus         prometheus.Counter
	edus         prometheus.Counter
	pduErrors    prometheus.Counter
	leasesTaken  prometheus.Counter
}

func newStats() *stats {
	return &stats{
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_fedsender_transactions_total",
			Help: "Transactions this replica sent to other servers: sent (answered 200) or failed (retried later).",
		}, []string{"result"}),
		pdus: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "myelin_fedsender_pdus_sent_total",
			Help: "PDUs in transactions other servers answered.",
		}),
		edus: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "myelin_fedsender_edus_sent_total",
			Help: "EDUs in transactions other servers answered.",
		}),
		pduErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "myelin_fedsender_pdu_errors_total",
			Help: "PDUs other servers answered with an error (logged, not sent again).",
		}),
		leasesTaken: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "myelin_fedsender_leases_taken_total",
			Help: "Destinations this replica took over (leases acquired).",
		}),
	}
}

func (st *stats) collectors(s *Service) []prometheus.Collector {
	return []prometheus.Collector{st.transactions, st.pdus, st.edus, st.pduErrors, st.leasesTaken, &queueCollector{s: s}}
}

// queueCollector reads each destination's queue and retry state.
type queueCollector struct{ s *Service }

var (
	descQueuedPDUs = prometheus.NewDesc("myelin_fedsender_queued_pdus",
		"PDUs waiting for a destination (a transaction in flight included).", []string{"destination"}, nil)
	descQueuedEDUs = prometheus.NewDesc("myelin_fedsender_queued_edus",
		"EDUs waiting for a destination (a transaction in flight included).", []string{"destination"}, nil)
	descOldest = prometheus.NewDesc("myelin_fedsender_oldest_pending_seconds",
		"Age of the oldest row waiting for a destination (0 when none waits).", []string{"destination"}, nil)
	descFailures = prometheus.NewDesc("myelin_fedsender_destination_failures",
		"Consecutive failed attempts to reach a destination (0 once it answers).", []string{"destination"}, nil)
	descBackoff = prometheus.NewDesc("myelin_fedsender_backoff_seconds",
		"Seconds until the next attempt to reach a destination (0: not backing off).", []string{"destination"}, nil)
	descCatchUp = prometheus.NewDesc("myelin_fedsender_catch_up",
		"1 while a destination is catching up after a long outage (only each room's newest PDU is kept).", []string{"destination"}, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueuedPDUs, descQueuedEDUs, descOldest, descFailures, descBackoff, descCatchUp} {
		ch <- d
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	all, err := c.s.store.Stats(ctx)
	if err != nil {
		c.s.log.Warn("fedsender metrics: queue stats")
		return
	}
	now := c.s.now()
	for _, q := range all {
		var oldest, backoff, catchUp float64
		if !q.Oldest.IsZero() {
			oldest = max(0, now.Sub(q.Oldest).Seconds())
		}
		if q.State.RetryAt.After(now) {
			backoff = q.State.RetryAt.Sub(now).Seconds()
		}
		if q.State.CatchUp {
			catchUp = 1
		}
		ch <- prometheus.MustNewConstMetric(descQueuedPDUs, prometheus.GaugeValue, float64(q.PDUs), q.Destination)
		ch <- prometheus.MustNewConstMetric(descQueuedEDUs, prometheus.GaugeValue, float64(q.EDUs), q.Destination)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, oldest, q.Destination)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(q.State.Failures), q.Destination)
		ch <- prometheus.MustNewConstMetric(descBackoff, prometheus.GaugeValue, backoff, q.Destination)
		ch <- prometheus.MustNewConstMetric(descCatchUp, prometheus.GaugeValue, catchUp, q.Destination)
	}
}
