package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// A batch is applied in one transaction: fn runs for the messages above
// the recorded position only, in order; the last sequence becomes the
// position; a failing message rolls the whole batch back (its queue rows
// and the position), so the batch can be retried.
func TestApplyBatch(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	const dest = "remote.test"
	var ran []int
	n := 0 // event IDs of the queued PDUs
	enqueue := func(tx *store.Tx, i int) error {
		ran = append(ran, i)
		n++
		return tx.EnqueuePDU(ctx, []string{dest}, "!r:ours.test", fmt.Sprintf("$%d", n), []byte(`{}`))
	}
	applied, err := st.ApplyBatch(ctx, "c", []uint64{1, 2, 3}, enqueue)
	if err != nil || !applied || !slices.Equal(ran, []int{0, 1, 2}) {
		t.Fatalf("first batch: applied %v, ran %v, %v", applied, ran, err)
	}
	if pos, err := st.Position(ctx, "c"); err != nil || pos != 3 {
		t.Fatalf("position %d %v, want 3", pos, err)
	}
	// Redelivered 2 and 3 with a new 4: only 4 runs (index 2).
	ran = nil
	if applied, err = st.ApplyBatch(ctx, "c", []uint64{2, 3, 4}, enqueue); err != nil || !applied || !slices.Equal(ran, []int{2}) {
		t.Fatalf("second batch: applied %v, ran %v, %v", applied, ran, err)
	}
	// Nothing new: fn does not run and nothing is applied.
	ran = nil
	if applied, err = st.ApplyBatch(ctx, "c", []uint64{3, 4}, enqueue); err != nil || applied || len(ran) != 0 {
		t.Fatalf("old batch: applied %v, ran %v, %v", applied, ran, err)
	}
	// A failure in the batch rolls back its earlier messages' rows too.
	boom := errors.New("boom")
	if _, err = st.ApplyBatch(ctx, "c", []uint64{5, 6}, func(tx *store.Tx, i int) error {
		if i == 1 {
			return boom
		}
		return enqueue(tx, 5)
	}); !errors.Is(err, boom) {
		t.Fatalf("failing batch: %v", err)
	}
	if pos, err := st.Position(ctx, "c"); err != nil || pos != 4 {
		t.Fatalf("position after the failed batch %d %v, want 4", pos, err)
	}
	f := store.Fence{Epoch: 1, Token: 1, Owner: "a"}
	if err := st.TakeFence(ctx, dest, f); err != nil {
		t.Fatal(err)
	}
	txn, err := st.NextTransaction(ctx, dest, f, 50, 100, time.Now())
	if err != nil || txn == nil || len(txn.PDUs) != 4 {
		t.Fatalf("queued: %+v %v, want the 4 applied messages' PDUs", txn, err)
	}
}
