package lease_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/fedsender/internal/lease"
)

const ttl = 2 * time.Second

// replica drives a Manager the way the federation sender does: every
// 100ms it takes the keys it wins and hands back the ones it does not.
type replica struct {
	m      *lease.Manager
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu   sync.Mutex
	held map[string]*lease.Lease
	// took counts the leases taken, by key.
	took map[string]int
}

func startReplica(t *testing.T, url, id string, keys []string) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := lease.Open(ctx, testkit.JetStream(t, url), lease.Config{Bucket: "test", TTL: ttl, ID: id}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{m: m, cancel: cancel, held: map[string]*lease.Lease{}, took: map[string]int{}}
	r.done.Add(2)
	go func() { defer r.done.Done(); _ = m.Run(ctx) }()
	go func() {
		defer r.done.Done()
		for ctx.Err() == nil {
			for _, k := range keys {
				r.mu.Lock()
				l := r.held[k]
				r.mu.Unlock()
				switch {
				case l != nil && l.Context().Err() != nil:
					r.mu.Lock()
					delete(r.held, k)
					r.mu.Unlock()
				case l != nil && !m.Wants(k):
					m.Release(ctx, l)
					r.mu.Lock()
					delete(r.held, k)
					r.mu.Unlock()
				case l == nil && m.Wants(k):
					if l, err := m.Acquire(ctx, k); err == nil {
						r.mu.Lock()
						r.held[k] = l
						r.took[k]++
						r.mu.Unlock()
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(r.crash)
	return r
}

// crash stops the replica without handing anything back.
func (r *replica) crash() {
	r.cancel()
	r.done.Wait()
}

// leave stops the replica gracefully: it releases its leases and leaves.
func (r *replica) leave() {
	r.crash()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.m.Close(ctx)
}

func (r *replica) valid(key string) *lease.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.held[key]; l != nil && l.Valid() {
		return l
	}
	return nil
}

// balanced checks that every key is held, validly, by the member that
// wins it among ids, and by no other replica.
func balanced(keys []string, ids []string, rs map[string]*replica) error {
	for _, k := range keys {
		want := lease.Owner(ids, k)
		for id, r := range rs {
			l := r.valid(k)
			if id == want && l == nil {
				return fmt.Errorf("%s does not hold %s yet", id, k)
			}
			if id != want && l != nil {
				return fmt.Errorf("%s still holds %s (owner: %s)", id, k, want)
			}
		}
	}
	return nil
}

// watchOverlap fails the test if two replicas ever hold a valid lease on
// one key at the same moment, until stop is closed.
func watchOverlap(t *testing.T, keys []string, rs func() []*replica, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for _, k := range keys {
				n := 0
				for _, r := range rs() {
					if r.valid(k) != nil {
						n++
					}
				}
				if n > 1 {
					t.Errorf("%d replicas hold %s at once", n, k)
					return
				}
			}
		}
	}()
	return &wg
}

func TestLeasesMoveWithMembers(t *testing.T) {
	url := testkit.NATS(t)
	var keys []string
	for i := range 30 {
		keys = append(keys, fmt.Sprintf("d.dest%02d", i))
	}
	var mu sync.Mutex
	rs := map[string]*replica{}
	all := func() []*replica {
		mu.Lock()
		defer mu.Unlock()
		out := []*replica{}
		for _, r := range rs {
			out = append(out, r)
		}
		return out
	}
	start := func(id string) {
		r := startReplica(t, url, id, keys)
		mu.Lock()
		rs[id] = r
		mu.Unlock()
	}
	check := func(ids ...string) time.Duration {
		t.Helper()
		began := time.Now()
		testkit.Eventually(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			return balanced(keys, ids, rs)
		})
		return time.Since(began)
	}
	stop := make(chan struct{})
	wg := watchOverlap(t, keys, all, stop)
	defer func() { close(stop); wg.Wait() }()

	for _, id := range []string{"a", "b", "c"} {
		start(id)
	}
	check("a", "b", "c")
	for _, id := range []string{"a", "b", "c"} {
		rs[id].mu.Lock()
		n := len(rs[id].held)
		rs[id].mu.Unlock()
		if n == 0 || n == len(keys) {
			t.Errorf("%s holds %d of %d keys: not shared", id, n, len(keys))
		}
	}

	// A crash: c stops renewing and never releases; its keys move when
	// its leases and heartbeat expire.
	rs["c"].crash()
	mu.Lock()
	delete(rs, "c")
	mu.Unlock()
	t.Logf("after a crash: rebalanced in %s (TTL %s)", check("a", "b"), ttl)

	// A join: d takes its share from a and b, which hand it over.
	start("d")
	t.Logf("after a join: rebalanced in %s", check("a", "b", "d"))

	// A graceful exit hands the keys over at once.
	rs["d"].leave()
	mu.Lock()
	delete(rs, "d")
	mu.Unlock()
	t.Logf("after a graceful exit: rebalanced in %s", check("a", "b"))
}

func TestPausedOwnerIsFenced(t *testing.T) {
	url := testkit.NATS(t)
	ctx := context.Background()
	js := testkit.JetStream(t, url)
	open := func(id string) *lease.Manager {
		m, err := lease.Open(ctx, js, lease.Config{Bucket: "test", TTL: ttl, ID: id}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a, b := open("a"), open("b")
	la, err := a.Acquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, "k"); err != lease.ErrHeld {
		t.Fatalf("second acquire: %v, want ErrHeld", err)
	}
	// a is "paused": nothing renews its lease (its Run is not running).
	// Its own clock ends the lease before the bucket lets b take it.
	var lb *lease.Lease
	testkit.Eventually(t, 10*time.Second, func() error {
		var err error
		lb, err = b.Acquire(ctx, "k")
		return err
	})
	if la.Valid() || la.Context().Err() == nil {
		t.Fatal("the paused owner's lease is still valid after another replica took the key")
	}
	if !la.Token.Less(lb.Token) {
		t.Fatalf("token %v of the new owner is not above %v", lb.Token, la.Token)
	}
	// a resumes and renews: the compare-and-set fails, the lease is lost
	// and stays lost; b's lease is untouched.
	rctx, cancel := context.WithTimeout(ctx, 2*ttl)
	defer cancel()
	go func() { _ = a.Run(rctx) }()
	if h, err := a.Holder(ctx, "k"); err != nil || h != "b" {
		t.Fatalf("holder %q %v, want b", h, err)
	}
	a.Release(ctx, la) // a stale release must not delete b's lease
	if h, err := a.Holder(ctx, "k"); err != nil || h != "b" || !lb.Valid() {
		t.Fatalf("after the stale release: holder %q %v, b valid %v", h, err, lb.Valid())
	}
}
