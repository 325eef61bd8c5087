package appservice_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// BenchmarkDelivery measures delivery to one appservice through the real
// stack (issue #17's figures): events/s when a backlog drains (events
// queued while the appservice answered 500, then it recovers), and the
// p99 from the send's answer (the event is committed) to the
// appservice's receipt of the transaction carrying it, one event at a
// time. Run with
// go test -run '^$' -bench Delivery -benchtime 1x ./services/appservice.
func BenchmarkDelivery(b *testing.B) {
	const backlog, serial = 2000, 300
	for b.Loop() {
		e := newEnv(b, false, asSpec{id: "bench", namespaces: users(`@watched_.*:as\.test`, false)})
		ctx := context.Background()
		alice, bob := e.user("alice"), e.user("watched_bob")
		room := e.room(alice, nil)
		join(b, bob, room)
		r := e.recv["bench"]
		c := e.client()

		r.setMode(mode500)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var backlogIDs []string
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids := send(b, alice, room, backlog/8, fmt.Sprintf("w%d", w))
				mu.Lock()
				backlogIDs = append(backlogIDs, ids...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		testkit.Eventually(b, time.Minute, func() error {
			st, err := c.ListAppservices(ctx, &appservicev1.ListAppservicesRequest{})
			if err != nil {
				return err
			}
			if d := st.GetAppservices()[0].GetQueueDepth(); d < backlog {
				return fmt.Errorf("queued %d of %d", d, backlog)
			}
			return nil
		})
		start := time.Now()
		r.setMode(modeOK)
		testkit.Eventually(b, time.Minute, func() error {
			if n := len(r.eventIDs(room, "m.room.message")); n < backlog {
				return fmt.Errorf("%d of %d delivered", n, backlog)
			}
			return nil
		})
		drain := time.Since(start)
		b.ReportMetric(float64(backlog)/drain.Seconds(), "backlog-events/s")

		var lat []time.Duration
		for i := 0; i < serial; i++ {
			id := send(b, alice, room, 1, "serial")[0]
			sent := time.Now()
			testkit.Eventually(b, 10*time.Second, func() error {
				r.mu.Lock()
				defer r.mu.Unlock()
				if at, ok := r.arrived[id]; ok {
					lat = append(lat, max(at.Sub(sent), 0))
					return nil
				}
				return fmt.Errorf("event %s not delivered", id)
			})
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	}
}
