package appservice

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// AdminPath lists the appservices with their state (JSON), on the
// service's HTTP listener.
const AdminPath = "/_myelin/admin/appservices"

// stats are the service's Prometheus metrics: counters of what this
// replica pushed, and per appservice (read from the schema at each
// scrape, so every replica reports the same) the queue depth, the age of
// the oldest waiting item and the failures.
type stats struct {
	txns      *prometheus.CounterVec
	events    *prometheus.CounterVec
	ephemeral *prometheus.CounterVec
	toDevice  *prometheus.CounterVec
}

func newStats() *stats {
	return &stats{
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_appservice_transactions_total",
			Help: "Transactions this replica pushed to appservices: sent (answered 200) or failed (retried later).",
		}, []string{"appservice", "result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_appservice_events_pushed_total",
			Help: "Room events in transactions appservices answered.",
		}, []string{"appservice"}),
		ephemeral: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_appservice_ephemeral_pushed_total",
			Help: "Ephemeral items (typing, receipts, presence) in transactions appservices answered.",
		}, []string{"appservice"}),
		toDevice: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_appservice_to_device_pushed_total",
			Help: "To-device messages (one per device) in transactions appservices answered.",
		}, []string{"appservice"}),
	}
}

func (st *stats) pushed(id string, events, ephemeral, toDevice int) {
	st.txns.WithLabelValues(id, "sent").Inc()
	st.events.WithLabelValues(id).Add(float64(events))
	st.ephemeral.WithLabelValues(id).Add(float64(ephemeral))
	st.toDevice.WithLabelValues(id).Add(float64(toDevice))
}

func (st *stats) failed(id string) { st.txns.WithLabelValues(id, "failed").Inc() }

func (st *stats) collectors(s *Service) []prometheus.Collector {
	return []prometheus.Collector{st.txns, st.events, st.ephemeral, st.toDevice, &queueCollector{s: s}}
}

// queueCollector reads each appservice's queue and delivery state.
type queueCollector struct{ s *Service }

var (
	descDepth = prometheus.NewDesc("myelin_appservice_queue_depth",
		"Items (events, ephemeral data and to-device messages) waiting for an appservice, a transaction in flight included.", []string{"appservice"}, nil)
	descOldest = prometheus.NewDesc("myelin_appservice_oldest_pending_seconds",
		"Age of the oldest item waiting for an appservice (0 when none waits).", []string{"appservice"}, nil)
	descFailures = prometheus.NewDesc("myelin_appservice_consecutive_failures",
		"Consecutive failed attempts of an appservice's transaction in flight (0 once it answers).", []string{"appservice"}, nil)
	descFailuresTotal = prometheus.NewDesc("myelin_appservice_failures_total",
		"Failed transaction attempts to an appservice, over every replica.", []string{"appservice"}, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDepth
	ch <- descOldest
	ch <- descFailures
	ch <- descFailuresTotal
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.s.list(ctx)
	if err != nil {
		return
	}
	for _, a := range list {
		ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(a.GetQueueDepth()), a.GetId())
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, float64(a.GetOldestPendingAgeMs())/1000, a.GetId())
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(a.GetConsecutiveFailures()), a.GetId())
		ch <- prometheus.MustNewConstMetric(descFailuresTotal, prometheus.CounterValue, float64(a.GetFailuresTotal()), a.GetId())
	}
}

// list is every registration with its state.
func (s *Service) list(ctx context.Context) ([]*appservicev1.AppserviceState, error) {
	states, err := s.store.States(ctx)
	if err != nil {
		return nil, err
	}
	t := now()
	var out []*appservicev1.AppserviceState
	for _, r := range s.regs.List() {
		st := states[r.ID]
		a := &appservicev1.AppserviceState{
			Id:                  r.ID,
			Url:                 r.BaseURL(),
			SenderUserId:        string(r.SenderUserID()),
			ReceiveEphemeral:    r.WantsEphemeral(),
			RateLimited:         r.IsRateLimited(),
			Protocols:           r.Protocols,
			QueueDepth:          st.QueueDepth,
			ConsecutiveFailures: int32(st.Failures),
			FailuresTotal:       st.FailuresTotal,
			LastError:           st.LastError,
			LastAckedTxnId:      st.LastAckedTxn,
			AckedTxnsTotal:      st.AckedTotal,
		}
		if !st.OldestPending.IsZero() {
			a.OldestPendingAgeMs = max(t.Sub(st.OldestPending).Milliseconds(), 0)
		}
		if !st.NextAttempt.IsZero() {
			a.NextAttemptUnixMs = st.NextAttempt.UnixMilli()
		}
		out = append(out, a)
	}
	return out, nil
}

// serveAdminList answers GET /_myelin/admin/appservices with
// {"appservices": [AppserviceState as JSON]} to the bearer of admin_token.
func (s *Service) serveAdminList(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if s.cfg.AdminToken == "" {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"appservice.admin_token is not set"}`))
		return
	}
	given, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(given), []byte(s.cfg.AdminToken)) != 1 {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"bad or missing admin token"}`))
		return
	}
	list, err := s.list(r.Context())
	if err != nil {
		http.Error(w, `{"errcode":"M_UNKNOWN","error":"appservice states unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	raw, _ := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(&appservicev1.ListAppservicesResponse{Appservices: list})
	_, _ = w.Write(raw)
}
