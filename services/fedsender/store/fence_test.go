package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// An owner whose lease moved (a newer fencing token was taken) can
// neither make a transaction, nor complete the one it sent, nor record a
// failure; the new owner retries the same transaction (same ID and
// content) and completes it. An older token can never be taken again.
func TestFencedOwnerCannotWrite(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	const dest = "remote.test"
	now := time.Now()
	if _, err := st.Apply(ctx, "test", 1, func(tx *store.Tx) error {
		return tx.EnqueuePDU(ctx, []string{dest}, "!r:ours.test", "$one", []byte(`{"n":1}`))
	}); err != nil {
		t.Fatal(err)
	}
	old := store.Fence{Epoch: 1, Token: 10, Owner: "a"}
	if _, err := st.NextTransaction(ctx, dest, old, 50, 100, now); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("before any fence was taken: %v, want ErrFenced", err)
	}
	if err := st.TakeFence(ctx, dest, old); err != nil {
		t.Fatal(err)
	}
	sent, err := st.NextTransaction(ctx, dest, old, 50, 100, now)
	if err != nil || sent == nil || len(sent.PDUs) != 1 {
		t.Fatalf("owner's transaction: %+v %v", sent, err)
	}
	// b takes the destination over; a is paused meanwhile.
	newer := store.Fence{Epoch: 1, Token: 11, Owner: "b"}
	if err := st.TakeFence(ctx, dest, newer); err != nil {
		t.Fatal(err)
	}
	for name, write := range map[string]func() error{
		"next":     func() error { _, err := st.NextTransaction(ctx, dest, old, 50, 100, now); return err },
		"complete": func() error { return st.CompleteTransaction(ctx, dest, old, sent.ID, now) },
		"failure": func() error {
			_, err := st.RecordFailure(ctx, dest, old, now, func(int) time.Duration { return time.Second }, time.Hour)
			return err
		},
		"take again": func() error { return st.TakeFence(ctx, dest, old) },
		"older epoch": func() error {
			return st.TakeFence(ctx, dest, store.Fence{Epoch: 0, Token: 99, Owner: "c"})
		},
	} {
		if err := write(); !errors.Is(err, store.ErrFenced) {
			t.Errorf("%s with the old token: %v, want ErrFenced", name, err)
		}
	}
	again, err := st.NextTransaction(ctx, dest, newer, 50, 100, now.Add(time.Minute))
	if err != nil || again == nil || again.ID != sent.ID || !again.Retry || again.TS != sent.TS || len(again.PDUs) != 1 {
		t.Fatalf("new owner's transaction %+v %v, want the same as %+v", again, err, sent)
	}
	if err := st.CompleteTransaction(ctx, dest, newer, again.ID, now); err != nil {
		t.Fatal(err)
	}
	if next, err := st.NextTransaction(ctx, dest, newer, 50, 100, now); err != nil || next != nil {
		t.Fatalf("after completion: %+v %v, want nothing", next, err)
	}
	// A bucket made afresh (a later epoch) counts above any older token.
	if err := st.TakeFence(ctx, dest, store.Fence{Epoch: 2, Token: 1, Owner: "a"}); err != nil {
		t.Fatalf("later epoch: %v", err)
	}
}
