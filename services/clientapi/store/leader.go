package store

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ConsumerLock is a PostgreSQL session-level advisory lock held on a
// connection of its own. Client-API replicas take it before consuming room
// events, so exactly one replica stores them at a time and in stream order
// (two replicas storing batches side by side could store a room's events
// out of order). Lost with its connection: the holder must watch Alive.
type ConsumerLock struct {
	conn *pgxpool.Conn
	name string
}

// AcquireConsumerLock blocks until this process holds the lock for the
// named consumer, or ctx ends.
func (s *Store) AcquireConsumerLock(ctx context.Context, consumer string) (*ConsumerLock, error) {
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	name := Schema + ".consumer:" + consumer
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext($1))`, name); err != nil {
		conn.Release()
		return nil, err
	}
	return &ConsumerLock{conn: conn, name: name}, nil
}

// Alive checks that the lock's connection, and so the lock, still exists.
func (l *ConsumerLock) Alive(ctx context.Context) error {
	return l.conn.Ping(ctx)
}

// Release gives the lock up.
func (l *ConsumerLock) Release() {
	_, _ = l.conn.Exec(context.Background(), `SELECT pg_advisory_unlock(hashtext($1))`, l.name)
	l.conn.Release()
}
