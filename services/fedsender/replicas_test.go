package fedsender_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// proxy forwards TCP connections to target until cut: then every
// connection drops and new ones are refused, as for a process that died
// or lost the network.
type proxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target}
	t.Cleanup(p.cutOff)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				_ = c.Close()
				_ = u.Close()
				return
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) cutOff() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	_ = p.lis.Close()
	for _, c := range p.conns {
		_ = c.Close()
	}
}

// viaProxy rewrites a URL's host:port to a new proxy's.
func viaProxy(t *testing.T, raw string) (string, *proxy) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	u.Host = p.addr()
	return u.String(), p
}

// leaseView reads the sender replicas' KV buckets: the live members and
// each lease's holder.
type leaseView struct {
	members, leases jetstream.KeyValue
}

func newLeaseView(t *testing.T, natsURL string) *leaseView {
	t.Helper()
	js := testkit.JetStream(t, natsURL)
	ctx := context.Background()
	var v leaseView
	var err error
	testkit.Eventually(t, 30*time.Second, func() error {
		if v.members, err = js.KeyValue(ctx, "fedsender-members"); err != nil {
			return err
		}
		v.leases, err = js.KeyValue(ctx, "fedsender-leases")
		return err
	})
	return &v
}

func keysOf(kv jetstream.KeyValue) ([]string, error) {
	keys, err := kv.Keys(context.Background())
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return keys, err
}

// holders returns the live members and, for each member, how many
// destination leases it holds (a lease held by a non-member counts under
// its holder too).
func (v *leaseView) holders() (members []string, held map[string]int, err error) {
	if members, err = keysOf(v.members); err != nil {
		return nil, nil, err
	}
	keys, err := keysOf(v.leases)
	if err != nil {
		return nil, nil, err
	}
	held = map[string]int{}
	for _, k := range keys {
		if k == "consumers" {
			continue
		}
		e, err := v.leases.Get(context.Background(), k)
		if err != nil {
			continue // released meanwhile
		}
		held[string(e.Value())]++
	}
	return members, held, nil
}

// settled checks that there are want members, that every destination
// lease is held by one of them and that each holds some.
func (v *leaseView) settled(want, dests int) error {
	members, held, err := v.holders()
	if err != nil {
		return err
	}
	if len(members) != want {
		return fmt.Errorf("%d members %v, want %d", len(members), members, want)
	}
	total := 0
	for holder, n := range held {
		if !slices.Contains(members, holder) {
			return fmt.Errorf("%s (not a member) holds %d leases", holder, n)
		}
		total += n
	}
	for _, m := range members {
		if held[m] == 0 {
			return fmt.Errorf("member %s holds no destination (%v)", m, held)
		}
	}
	if total != dests {
		return fmt.Errorf("%d destinations leased, want %d", total, dests)
	}
	return nil
}

// stream sends a message into a room every interval until stopped.
type stream struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	ids  []string
}

func startStream(t *testing.T, c *mautrix.Client, roomID id.RoomID, every time.Duration) *stream {
	s := &stream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			case <-time.After(every):
			}
			resp, err := c.SendText(context.Background(), roomID, fmt.Sprintf("steady %d", i))
			if err != nil {
				t.Errorf("send: %v", err)
				return
			}
			s.mu.Lock()
			s.ids = append(s.ids, resp.EventID.String())
			s.mu.Unlock()
		}
	}()
	return s
}

// sent returns the IDs of the messages sent so far, in order.
func (s *stream) sent() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ids)
}

// end stops the stream and returns the IDs of every message it sent.
func (s *stream) end() []string {
	close(s.stop)
	<-s.done
	return s.sent()
}

// Three sender replicas share thirty destinations while events flow. One
// is cut off from NATS and PostgreSQL and stopped (a crash: nothing is
// handed over), a fourth joins, one exits gracefully. After each change
// the leases settle on the live replicas within a few lease TTLs, and in
// the end every remote has every event exactly once, in order, and no
// remote ever had two transactions in flight at once.
func TestSenderReplicasShareDestinations(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	var names []string
	for i := range 30 {
		names = append(names, fmt.Sprintf("r%02d.test", i))
	}
	e := newEnv(t, envOpts{remotes: names, split: true})
	alice := e.user("alice")
	room := e.room(alice)
	for _, n := range names {
		e.remoteJoin(e.remotes[n], room, "rita")
	}
	view := newLeaseView(t, e.cfg.NATS.URL)
	ttl := e.cfg.FederationSender.LeaseTTL

	// A second and a third replica; the third reaches NATS and PostgreSQL
	// through proxies, to be cut off.
	second := e.startReplica(nil)
	var natsProxy, pgProxy *proxy
	crashing := e.startReplica(func(c *myelin.Config) {
		c.NATS.URL, natsProxy = viaProxy(t, c.NATS.URL)
		c.FederationSender.DatabaseURL, pgProxy = viaProxy(t, c.Database.URL)
	})
	s := startStream(t, alice, room, 50*time.Millisecond)
	began := time.Now()
	testkit.Eventually(t, 30*time.Second, func() error { return view.settled(3, len(names)) })
	t.Logf("three replicas: settled in %s", time.Since(began))

	// A crash.
	time.Sleep(ttl)
	natsProxy.cutOff()
	pgProxy.cutOff()
	began = time.Now()
	testkit.Eventually(t, 30*time.Second, func() error { return view.settled(2, len(names)) })
	t.Logf("after a crash: settled in %s (lease TTL %s)", time.Since(began), ttl)
	stopped := make(chan struct{})
	go func() { _ = crashing.Process.Stop(); close(stopped) }()

	// A join.
	time.Sleep(ttl)
	began = time.Now()
	joined := e.startReplica(nil)
	testkit.Eventually(t, 30*time.Second, func() error { return view.settled(3, len(names)) })
	t.Logf("after a join: settled in %s", time.Since(began))

	// A graceful exit.
	time.Sleep(ttl)
	began = time.Now()
	joined.Stop()
	testkit.Eventually(t, 30*time.Second, func() error { return view.settled(2, len(names)) })
	t.Logf("after a graceful exit: settled in %s", time.Since(began))

	time.Sleep(ttl)
	ids := s.end()
	<-stopped
	if len(ids) < 20 {
		t.Fatalf("only %d events were sent", len(ids))
	}
	began = time.Now()
	for _, n := range names {
		r := e.remotes[n]
		eventually(t, func() error {
			got := r.received(room.String())
			if len(got) != len(ids) {
				return fmt.Errorf("%s has %d of %d events", n, len(got), len(ids))
			}
			for i := range ids {
				if got[i].eventID != ids[i] {
					return fmt.Errorf("%s: event %d is %s, want %s (order or duplicates)", n, i, got[i].eventID, ids[i])
				}
			}
			return nil
		})
		r.mu.Lock()
		overlaps := r.overlaps
		r.mu.Unlock()
		if overlaps > 0 {
			t.Errorf("%s had %d transactions begin while another was in flight", n, overlaps)
		}
	}
	t.Logf("%d events reached each of %d remotes exactly once, in order (drained %s after the stream ended)",
		len(ids), len(names), time.Since(began))

	// Metrics: each destination is reported by its owner only; between
	// them the two replicas own all thirty; the crash moved some.
	eventually(t, func() error {
		seen, owned, moved := map[string]int{}, 0.0, 0
		for _, p := range []*stack.Stack{e.sender, second} {
			m := metrics(t, p)
			owned += m["myelin_fedsender_destinations_owned"]
			if m["myelin_fedsender_replicas"] != 2 {
				return fmt.Errorf("a replica counts %v replicas", m["myelin_fedsender_replicas"])
			}
			for _, n := range names {
				if _, ok := m[`myelin_fedsender_queued_pdus{destination="`+n+`"}`]; ok {
					seen[n]++
				}
				if m[`myelin_fedsender_owner_changes_total{destination="`+n+`"}`] > 0 {
					moved++
				}
			}
		}
		if owned != float64(len(names)) || len(seen) != len(names) {
			return fmt.Errorf("%v destinations owned, %d reported", owned, len(seen))
		}
		for n, c := range seen {
			if c != 1 {
				return fmt.Errorf("%s reported by %d replicas", n, c)
			}
		}
		if moved == 0 {
			return fmt.Errorf("no destination shows an owner change")
		}
		return nil
	})
}
