package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Only one holder of a consumer lock at a time; releasing hands it over.
func TestConsumerLockIsExclusive(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	first, err := st.AcquireConsumerLock(ctx, "sync")
	if err != nil {
		t.Fatal(err)
	}
	// Another consumer name is another lock.
	other, err := st.AcquireConsumerLock(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	other.Release()

	got := make(chan *ConsumerLock, 1)
	go func() {
		l, err := st.AcquireConsumerLock(ctx, "sync")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	// The second taker must be blocked while the first holds the lock:
	// its query waits on pg_locks.
	testkit.Eventually(t, 20*time.Second, func() error {
		var waiting int
		if err := st.db.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&waiting); err != nil {
			return err
		}
		if waiting != 1 {
			return fmt.Errorf("%d waiting advisory locks, want 1", waiting)
		}
		return nil
	})
	select {
	case <-got:
		t.Fatal("second holder got the lock while the first held it")
	default:
	}
	first.Release()
	select {
	case l := <-got:
		l.Release()
	case <-time.After(20 * time.Second):
		t.Fatal("lock not handed over after release")
	}
}
