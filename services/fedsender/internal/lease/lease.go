// Package lease shares keys (the federation sender's destinations and its
// stream consumers) among the live replicas of a service, on two NATS
// JetStream key-value buckets with a TTL:
//
//   - <bucket>-members: one key per live replica, put every TTL/4. A
//     replica that stops putting it (it died, hung or lost NATS) drops out
//     of the bucket TTL later.
//   - <bucket>-leases: one key per leased key, whose value is the owner.
//     Taking a lease is a KV create (it fails while the key exists);
//     renewing it is a KV update with the expected last revision (a
//     compare-and-set); releasing it is a delete with the expected
//     revision. A lease its owner stops renewing expires with the bucket
//     TTL. JetStream orders these writes, so at any time one replica holds
//     a key.
//
// Who should own a key is rendezvous hashing over the live members: each
// replica takes the keys it wins and hands back the ones it no longer
// wins, so a replica that joins, leaves or dies moves only its share.
//
// The revision of the create that took a lease, with the leases bucket's
// creation time (so a bucket made afresh still counts upwards), is the
// lease's fencing Token: it grows with every new owner of a key. A caller
// stores it with what the lease guards and makes its writes conditional
// on it (the federation sender does, in PostgreSQL), so an owner that was
// paused or cut off past its lease cannot commit after a newer owner took
// the key. Each Lease also has a context that ends when the lease is lost
// or may have expired (its validity is kept on this process's monotonic
// clock, a fifth of the TTL short of the bucket's), which bounds what a
// paused owner does after it resumes to what it had already begun.
package lease

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Sentinel errors.
var (
	// ErrHeld: another replica holds the key.
	ErrHeld = errors.New("lease: held by another replica")
	// ErrLost: the lease moved to another replica or expired.
	ErrLost = errors.New("lease: lost")
	// ErrExpired: the lease was not renewed in time; it may have moved.
	ErrExpired = errors.New("lease: validity ran out")
	// ErrReleased: the lease was handed back.
	ErrReleased = errors.New("lease: released")
)

// Config configures a Manager.
type Config struct {
	// Bucket prefixes the two KV buckets' names.
	Bucket string
	// TTL is how long a member's heartbeat and a lease last unrenewed.
	TTL time.Duration
	// ID names this replica among the members (KV key characters).
	ID string
}

// Token is a lease's fencing token: larger for every later owner.
type Token struct {
	// Epoch is the leases bucket's creation time (Unix ns).
	Epoch int64
	// Rev is the revision of the create that took the lease.
	Rev int64
}

// Less orders tokens.
func (t Token) Less(o Token) bool {
	return t.Epoch < o.Epoch || t.Epoch == o.Epoch && t.Rev < o.Rev
}

// Lease is a key this replica holds.
type Lease struct {
	Key   string
	Token Token

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu         sync.Mutex
	rev        uint64    // last revision written (for the next update)
	validUntil time.Time // monotonic
	timer      *time.Timer
}

// Context ends when the lease is lost, may have expired, or is released.
func (l *Lease) Context() context.Context { return l.ctx }

// Valid reports whether the lease is still surely held.
func (l *Lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ctx.Err() == nil && time.Now().Before(l.validUntil)
}

// extend records a successful write made at start.
func (l *Lease) extend(rev uint64, start time.Time, valid time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rev = rev
	l.validUntil = start.Add(valid)
	if l.timer == nil {
		l.timer = time.AfterFunc(time.Until(l.validUntil), func() { l.cancel(ErrExpired) })
	} else {
		l.timer.Reset(time.Until(l.validUntil))
	}
}

func (l *Lease) end(cause error) {
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	l.cancel(cause)
}

func (l *Lease) revision() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev
}

// Manager holds this replica's membership and leases.
type Manager struct {
	cfg     Config
	log     *zap.Logger
	members jetstream.KeyValue
	leases  jetstream.KeyValue
	epoch   int64

	mu   sync.Mutex
	live []string // sorted member IDs, this one included
	held map[string]*Lease
}

// Open makes (or opens) the buckets.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, log *zap.Logger) (*Manager, error) {
	if cfg.Bucket == "" || cfg.ID == "" || cfg.TTL < time.Second {
		return nil, errors.New("lease: Bucket, ID and a TTL of at least 1s are required")
	}
	m := &Manager{cfg: cfg, log: log, live: []string{cfg.ID}, held: map[string]*Lease{}}
	var err error
	if m.members, err = bucket(ctx, js, cfg.Bucket+"-members", cfg.TTL, "live replicas (heartbeats)"); err != nil {
		return nil, err
	}
	if m.leases, err = bucket(ctx, js, cfg.Bucket+"-leases", cfg.TTL, "key → owning replica"); err != nil {
		return nil, err
	}
	st, err := m.leases.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease: bucket status: %w", err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		m.epoch = bs.StreamInfo().Created.UnixNano()
	}
	// Join before deciding anything, so a starting replica does not take
	// keys it would hand back at the first refresh.
	m.tick(ctx)
	return m, nil
}

func bucket(ctx context.Context, js jetstream.JetStream, name string, ttl time.Duration, what string) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: name, Description: "federation sender: " + what, History: 1, TTL: ttl,
	})
	if err != nil {
		return nil, fmt.Errorf("lease: bucket %s: %w", name, err)
	}
	return kv, nil
}

// ID is this replica's member ID.
func (m *Manager) ID() string { return m.cfg.ID }

// valid is how long a write keeps a lease surely held on this clock.
func (m *Manager) valid() time.Duration { return m.cfg.TTL - m.cfg.TTL/5 }

// Run heartbeats, follows the members and renews the leases until ctx
// ends. It does not release anything: Close does (a replica that exits
// without Close is a crashed one, whose leases expire).
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.TTL / 4)
	defer t.Stop()
	for {
		m.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Tick heartbeats, refreshes the members and renews the leases once.
func (m *Manager) tick(ctx context.Context) {
	if _, err := m.members.Put(ctx, m.cfg.ID, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil && ctx.Err() == nil {
		m.log.Warn("lease: heartbeat", zap.Error(err))
	}
	if err := m.refresh(ctx); err != nil && ctx.Err() == nil {
		m.log.Warn("lease: members", zap.Error(err))
	}
	m.mu.Lock()
	held := make([]*Lease, 0, len(m.held))
	for _, l := range m.held {
		held = append(held, l)
	}
	m.mu.Unlock()
	// The renewals go out together (at most renewConcurrency at a time):
	// one after another, a replica holding a hundred leases on a loaded
	// host would take longer than their validity to renew them all.
	sem := make(chan struct{}, renewConcurrency)
	var wg sync.WaitGroup
	for _, l := range held {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			m.renew(ctx, l)
		}()
	}
	wg.Wait()
}

// renewConcurrency bounds the renewals in flight at once.
const renewConcurrency = 32

// Refresh reads the live members.
func (m *Manager) refresh(ctx context.Context) error {
	keys, err := m.members.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return err
	}
	live := []string{m.cfg.ID}
	for _, k := range keys {
		if k != m.cfg.ID {
			live = append(live, k)
		}
	}
	slices.Sort(live)
	m.mu.Lock()
	m.live = live
	m.mu.Unlock()
	return nil
}

func (m *Manager) renew(ctx context.Context, l *Lease) {
	if l.ctx.Err() != nil {
		m.forget(l)
		return
	}
	start := time.Now()
	rev, err := m.leases.Update(ctx, l.Key, []byte(m.cfg.ID), l.revision())
	switch {
	case err == nil:
		l.extend(rev, start, m.valid())
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyNotFound):
		// The key was written by someone else or expired meanwhile.
		m.log.Warn("lease: lost", zap.String("key", l.Key), zap.Error(err))
		l.end(ErrLost)
		m.forget(l)
	default:
		// NATS is unreachable: the lease lasts until its validity runs
		// out (the timer ends it).
		if ctx.Err() == nil {
			m.log.Warn("lease: renew", zap.String("key", l.Key), zap.Error(err))
		}
	}
}

func (m *Manager) forget(l *Lease) {
	m.mu.Lock()
	if m.held[l.Key] == l {
		delete(m.held, l.Key)
	}
	m.mu.Unlock()
}

// Members are the live members as last read (sorted).
func (m *Manager) Members() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.live)
}

// Wants reports whether this replica should own key: it wins the
// rendezvous hash among the live members.
func (m *Manager) Wants(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Owner(m.live, key) == m.cfg.ID
}

// Owner is the member that wins key's rendezvous hash ("" without members).
func Owner(members []string, key string) string {
	var best string
	var bestScore uint64
	for _, id := range members {
		h := sha256.Sum256([]byte(id + "\x00" + key))
		if s := binary.BigEndian.Uint64(h[:8]); best == "" || s > bestScore {
			best, bestScore = id, s
		}
	}
	return best
}

// Acquire takes key's lease, or fails with ErrHeld. A key this replica
// holds already returns its lease.
func (m *Manager) Acquire(ctx context.Context, key string) (*Lease, error) {
	m.mu.Lock()
	if l := m.held[key]; l != nil && l.ctx.Err() == nil {
		m.mu.Unlock()
		return l, nil
	}
	m.mu.Unlock()
	start := time.Now()
	rev, err := m.leases.Create(ctx, key, []byte(m.cfg.ID))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, ErrHeld
	}
	if err != nil {
		return nil, fmt.Errorf("lease: create %s: %w", key, err)
	}
	lctx, cancel := context.WithCancelCause(context.Background())
	l := &Lease{Key: key, Token: Token{Epoch: m.epoch, Rev: int64(rev)}, ctx: lctx, cancel: cancel}
	l.extend(rev, start, m.valid())
	m.mu.Lock()
	m.held[key] = l
	m.mu.Unlock()
	return l, nil
}

// Holder returns the replica holding key ("" when none does).
func (m *Manager) Holder(ctx context.Context, key string) (string, error) {
	e, err := m.leases.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}

// Release hands a lease back (a delete of the revision it holds, so it
// never deletes a newer owner's lease). Its context ends first.
func (m *Manager) Release(ctx context.Context, l *Lease) {
	lost := l.ctx.Err() != nil
	l.end(ErrReleased)
	m.forget(l)
	if lost {
		return
	}
	if err := m.leases.Delete(ctx, l.Key, jetstream.LastRevision(l.revision())); err != nil && ctx.Err() == nil {
		m.log.Info("lease: release", zap.String("key", l.Key), zap.Error(err))
	}
}

// Close releases every lease and leaves the members: the others take the
// keys at once instead of after the TTL. Stop using the leases first.
func (m *Manager) Close(ctx context.Context) {
	m.mu.Lock()
	held := make([]*Lease, 0, len(m.held))
	for _, l := range m.held {
		held = append(held, l)
	}
	m.mu.Unlock()
	for _, l := range held {
		m.Release(ctx, l)
	}
	if err := m.members.Delete(ctx, m.cfg.ID); err != nil && ctx.Err() == nil {
		m.log.Info("lease: leave", zap.Error(err))
	}
}
