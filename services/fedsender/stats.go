package fedsender

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// stats are the sender's Prometheus metrics: counters of what it sent and
// of the destinations it took over, per destination it owns the queue
// depth, the age of the oldest waiting row, the backoff state and the
// owner changes, and fleet-wide gauges for autoscaling (queueCollector).
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

// queueCollector reads the queues and retry states at each scrape. The
// series labelled by destination come only from the replica that owns the
// destination (holds its lease), so each destination is one series of
// each name across the fleet: the labels' cardinality is the number of
// destinations this replica owns (those with waiting rows, and idle ones
// for up to a minute after). The fleet-wide gauges (no labels) are the
// same on every replica, read from the shared schema: an autoscaler can
// average them over the pods.
type queueCollector struct{ s *Service }

var (
	descQueuedPDUs = prometheus.NewDesc("myelin_fedsender_queued_pdus",
		"PDUs waiting for a destination this replica owns (a transaction in flight included).", []string{"destination"}, nil)
	descQueuedEDUs = prometheus.NewDesc("myelin_fedsender_queued_edus",
		"EDUs waiting for a destination this replica owns (a transaction in flight included).", []string{"destination"}, nil)
	descOldest = prometheus.NewDesc("myelin_fedsender_oldest_pending_seconds",
		"Age of the oldest row waiting for a destination this replica owns (0 when none waits).", []string{"destination"}, nil)
	descFailures = prometheus.NewDesc("myelin_fedsender_destination_failures",
		"Consecutive failed attempts to reach a destination this replica owns (0 once it answers).", []string{"destination"}, nil)
	descBackoff = prometheus.NewDesc("myelin_fedsender_backoff_seconds",
		"Seconds until the next attempt to reach a destination this replica owns (0: not backing off).", []string{"destination"}, nil)
	descCatchUp = prometheus.NewDesc("myelin_fedsender_catch_up",
		"1 while a destination this replica owns is catching up after a long outage (only each room's newest PDU is kept).", []string{"destination"}, nil)
	descOwnerChanges = prometheus.NewDesc("myelin_fedsender_owner_changes_total",
		"Times a destination this replica owns changed owner among the sender replicas.", []string{"destination"}, nil)
	descOwned = prometheus.NewDesc("myelin_fedsender_destinations_owned",
		"Destinations this replica owns (holds the lease of).", nil, nil)
	descMembers = prometheus.NewDesc("myelin_fedsender_replicas",
		"Live federation sender replicas, as this replica last read them.", nil, nil)
	descFleetDepth = prometheus.NewDesc("myelin_fedsender_fleet_queue_depth",
		"PDUs and EDUs waiting for every destination (fleet-wide, the same on every replica).", nil, nil)
	descFleetOldest = prometheus.NewDesc("myelin_fedsender_fleet_oldest_pending_seconds",
		"Age of the oldest row waiting for any destination that is not backing off (fleet-wide, the same on every replica).", nil, nil)
	descFleetBackingOff = prometheus.NewDesc("myelin_fedsender_fleet_destinations_backing_off",
		"Destinations waiting out a backoff (fleet-wide, the same on every replica).", nil, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueuedPDUs, descQueuedEDUs, descOldest, descFailures, descBackoff, descCatchUp,
		descOwnerChanges, descOwned, descMembers, descFleetDepth, descFleetOldest, descFleetBackingOff} {
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
	owned, members := c.s.sender.owned()
	ch <- prometheus.MustNewConstMetric(descOwned, prometheus.GaugeValue, float64(len(owned)))
	ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(members))
	now := c.s.now()
	var depth, fleetOldest, backingOff float64
	for _, q := range all {
		var oldest, backoff, catchUp float64
		if !q.Oldest.IsZero() {
			oldest = max(0, now.Sub(q.Oldest).Seconds())
		}
		if q.State.RetryAt.After(now) {
			backoff = q.State.RetryAt.Sub(now).Seconds()
			backingOff++
		} else {
			// A destination that is down is not a reason to scale out.
			fleetOldest = max(fleetOldest, oldest)
		}
		depth += float64(q.PDUs + q.EDUs)
		if q.State.CatchUp {
			catchUp = 1
		}
		if !owned[q.Destination] {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descQueuedPDUs, prometheus.GaugeValue, float64(q.PDUs), q.Destination)
		ch <- prometheus.MustNewConstMetric(descQueuedEDUs, prometheus.GaugeValue, float64(q.EDUs), q.Destination)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, oldest, q.Destination)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(q.State.Failures), q.Destination)
		ch <- prometheus.MustNewConstMetric(descBackoff, prometheus.GaugeValue, backoff, q.Destination)
		ch <- prometheus.MustNewConstMetric(descCatchUp, prometheus.GaugeValue, catchUp, q.Destination)
		ch <- prometheus.MustNewConstMetric(descOwnerChanges, prometheus.CounterValue, float64(q.OwnerChanges), q.Destination)
	}
	ch <- prometheus.MustNewConstMetric(descFleetDepth, prometheus.GaugeValue, depth)
	ch <- prometheus.MustNewConstMetric(descFleetOldest, prometheus.GaugeValue, fleetOldest)
	ch <- prometheus.MustNewConstMetric(descFleetBackingOff, prometheus.GaugeValue, backingOff)
}
