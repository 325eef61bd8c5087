package roomserver

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

func TestWaveEnd(t *testing.T) {
	msgs := func(rooms ...string) []outputMessage {
		var out []outputMessage
		for _, r := range rooms {
			out = append(out, outputMessage{roomID: r})
		}
		return out
	}
	for _, c := range []struct {
		rooms []string
		start int
		want  int
	}{
		{[]string{"a", "b", "c"}, 0, 3},
		{[]string{"a", "b", "a", "c"}, 0, 2},
		{[]string{"a", "b", "a", "c"}, 2, 4},
		{[]string{"a", "a"}, 0, 1},
		{[]string{"a", "a"}, 1, 2},
	} {
		if got := waveEnd(msgs(c.rooms...), c.start); got != c.want {
			t.Errorf("waveEnd(%v, %d) = %d, want %d", c.rooms, c.start, got, c.want)
		}
	}
}

// TestPublishKeepsRoomOrderAfterFailure: events of several rooms, committed
// interleaved while no publisher ran, are published in waves. JetStream
// refuses the events of one room after a few (a per-subject limit that
// discards new messages) and takes the other rooms' events after them; the
// round fails, the watermark stops before the first refused entry, and the
// next round publishes the rest (repeating some, which JetStream drops as
// duplicates): every room's events are on JetStream once each, in commit
// order.
func TestPublishKeepsRoomOrderAfterFailure(t *testing.T) {
	h := newHarness(t, nil)
	h.restart(false)
	var rooms []string
	want := map[string][]string{}
	for range 3 {
		created := h.createRoom("11", "public", map[string]int{alice: 100})
		rooms = append(rooms, created.GetRoomId())
		want[created.GetRoomId()] = slices.Clone(created.GetEventIds())
	}
	total := 0
	for range 4 {
		for j, roomID := range rooms {
			n := 1
			if j == 0 {
				n = 2 // two events of a room in a row split a wave
			}
			for range n {
				want[roomID] = append(want[roomID], h.mustSend(roomID, alice, message(t, "interleaved")))
			}
		}
	}
	for _, ids := range want {
		total += len(ids)
	}

	// Room 0 has the most events; the limit lets the others through and
	// refuses room 0's sixth message, the second of a pair, which starts a
	// wave with the other rooms' next events (acknowledged after it).
	stream, err := h.js.Stream(h.ctx, bus.RoomEventsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	limited := cfg
	limit := len(want[rooms[0]]) - 8 + 5
	limited.MaxMsgsPerSubject, limited.Discard, limited.DiscardNewPerSubject = int64(limit), jetstream.DiscardNew, true
	if _, err := h.js.UpdateStream(h.ctx, limited); err != nil {
		t.Fatal(err)
	}
	p := &publisher{s: h.svc}
	if err := p.publishPending(h.ctx); err == nil {
		t.Fatal("publishing into a full stream succeeded")
	}
	if p.cursor.After == 0 {
		t.Fatal("the watermark did not move over the acknowledged entries")
	}
	// The first refused entry is room 0's event number limit+1.
	firstRefused := h.countRows(`SELECT o.stream_pos FROM outbox o JOIN events e USING (event_nid) WHERE e.event_id = $1`, want[rooms[0]][limit])
	if p.cursor.After >= firstRefused {
		t.Fatalf("watermark %d passed the first refused entry %d", p.cursor.After, firstRefused)
	}
	if n := h.countRows(`SELECT count(*) FROM outbox`); n != int64(total) {
		t.Fatalf("%d outbox entries, want %d", n, total)
	}

	if _, err := h.js.UpdateStream(h.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := p.publishPending(h.ctx); err != nil {
		t.Fatal(err)
	}
	for _, roomID := range rooms {
		msgs := h.waitPublished(roomID, len(want[roomID]))
		var got []string
		for _, m := range msgs {
			got = append(got, m.out.GetEventId())
		}
		if !slices.Equal(got, want[roomID]) {
			t.Fatalf("room %s: published %v\nwant %v", roomID, got, want[roomID])
		}
	}
}

// TestOutboxLateCommit: outbox positions are taken without a global lock,
// so a transaction may commit after one with a higher position. The
// publisher's next round still finds its row (a position watermark would
// have skipped it).
func TestOutboxLateCommit(t *testing.T) {
	h := newHarness(t, nil)
	h.restart(false)
	h.createRoom("11", "public", map[string]int{alice: 100})
	st := h.svc.store
	all, snap0, err := st.PendingOutbox(h.ctx, store.OutboxCursor{}, 1000, false)
	if err != nil || len(all.Entries) == 0 || snap0 == "" {
		t.Fatalf("first round: %d entries, snapshot %q, %v", len(all.Entries), snap0, err)
	}
	// Paging through the same rows two at a time, at the first page's
	// snapshot, gives the same entries.
	var paged []int64
	cursor := store.OutboxCursor{}
	for {
		page, snap, err := st.PendingOutbox(h.ctx, cursor, 2, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entries {
			paged = append(paged, e.StreamPos)
			cursor.After = e.StreamPos
		}
		cursor.Cur = snap
		if len(page.Entries) < 2 {
			break
		}
	}
	var want []int64
	for _, e := range all.Entries {
		want = append(want, e.StreamPos)
	}
	if !slices.Equal(paged, want) {
		t.Fatalf("paged %v, want %v", paged, want)
	}

	// Two more rows.
	insert := func(tx pgx.Tx) int64 { return h.insertOutboxCopy(tx) }
	early, err := st.Pool().Begin(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Rollback(h.ctx) //nolint:errcheck
	earlyPos := insert(early)
	late, err := st.Pool().Begin(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	latePos := insert(late)
	if err := late.Commit(h.ctx); err != nil {
		t.Fatal(err)
	}
	got, snap1, err := st.PendingOutbox(h.ctx, store.OutboxCursor{Prev: snap0}, 1000, false)
	if err != nil || len(got.Entries) != 1 || got.Entries[0].StreamPos != latePos {
		t.Fatalf("second round: %+v, %v; want only position %d", got.Entries, err, latePos)
	}
	if err := early.Commit(h.ctx); err != nil {
		t.Fatal(err)
	}
	got, snap2, err := st.PendingOutbox(h.ctx, store.OutboxCursor{Prev: snap1}, 1000, false)
	if err != nil || len(got.Entries) != 1 || got.Entries[0].StreamPos != earlyPos || earlyPos >= latePos {
		t.Fatalf("third round: %+v, %v; want only position %d (< %d)", got.Entries, err, earlyPos, latePos)
	}
	// Nothing new: an empty round.
	got, _, err = st.PendingOutbox(h.ctx, store.OutboxCursor{Prev: snap2}, 1000, false)
	if err != nil || len(got.Entries) != 0 {
		t.Fatalf("fourth round: %+v, %v; want none", got.Entries, err)
	}
}

// TestPruneOutboxKeepsWhatIsNotPublished: PruneOutbox deletes exactly the
// rows of transactions visible in the saved published snapshot (those the
// publisher published), including one that committed while an older
// transaction still ran (above the snapshot's xmin). The older
// transaction's row stays (the publisher has not published it), as does a
// row committed after the snapshot. Nothing goes before any snapshot is
// saved.
func TestPruneOutboxKeepsWhatIsNotPublished(t *testing.T) {
	h := newHarness(t, nil)
	h.restart(false) // no publisher: this test moves the snapshot itself
	h.createRoom("11", "public", map[string]int{alice: 100})
	st := h.svc.store
	outbox := func() int64 { return h.countRows(`SELECT count(*) FROM outbox`) }
	prune := func() int64 {
		t.Helper()
		n, err := st.PruneOutbox(h.ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	created := outbox()
	if n := prune(); n != 0 || created == 0 {
		t.Fatalf("before any saved snapshot: pruned %d of %d rows, want 0 of some", n, created)
	}

	begin := func() pgx.Tx {
		tx, err := st.Pool().Begin(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		return tx
	}
	insert := h.insertOutboxCopy
	commit := func(tx pgx.Tx) {
		if err := tx.Commit(h.ctx); err != nil {
			t.Fatal(err)
		}
	}
	running := begin()
	runningPos := insert(running)
	// A transaction that starts after the running one and commits first
	// puts the running one inside the snapshot's range (its xmin, below
	// its xmax, not visible) and is itself above the xmin but visible.
	during := begin()
	duringPos := insert(during)
	commit(during)
	_, snap, err := st.PendingOutbox(h.ctx, store.OutboxCursor{}, 1000, false)
	if err != nil {
		t.Fatal(err)
	}
	// The next round saves it as published.
	if _, _, err := st.PendingOutbox(h.ctx, store.OutboxCursor{Prev: snap}, 1000, true); err != nil {
		t.Fatal(err)
	}
	commit(running)
	late := begin()
	latePos := insert(late)
	commit(late)

	if n := prune(); n != created+1 {
		t.Fatalf("pruned %d rows, want the room's %d and the concurrent one", n, created)
	}
	rows, err := st.Pool().Query(h.ctx, `SELECT stream_pos FROM outbox ORDER BY stream_pos`)
	if err != nil {
		t.Fatal(err)
	}
	left, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{runningPos, latePos}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("left %v, want the running and the late row %v (the concurrent one was %d)", left, want, duringPos)
	}
	// The next round still finds the two it has not published.
	got, _, err := st.PendingOutbox(h.ctx, store.OutboxCursor{Prev: snap}, 1000, false)
	if err != nil || len(got.Entries) != 2 {
		t.Fatalf("round after pruning: %+v, %v; want the running and the late row", got.Entries, err)
	}
}

// TestPublisherPrunesOutbox: with the publisher running, the outbox empties
// once its events are on JetStream, even while a transaction of another
// database of the cluster (transaction IDs and snapshots are cluster-wide)
// that began before them is still running. Events committed while no
// publisher runs are not pruned, and a publisher started later still
// publishes them.
func TestPublisherPrunesOutbox(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.PublishPollInterval = 20 * time.Millisecond
		c.OutboxPruneInterval = 20 * time.Millisecond
	})
	// Another database's write transaction, older than every event below
	// and running until the outbox is empty: every snapshot's xmin stays
	// at or below it.
	other, err := pgx.Connect(h.ctx, testkit.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close(context.Background()) })
	otherTx, err := other.Begin(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var otherXID string
	if err := otherTx.QueryRow(h.ctx, `SELECT pg_current_xact_id()::text`).Scan(&otherXID); err != nil {
		t.Fatal(err)
	}
	created := h.createRoom("11", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	want := len(created.GetEventIds())
	for range 5 {
		h.mustSend(roomID, alice, message(t, "pruned later"))
		want++
	}
	h.waitPublished(roomID, want)
	testkit.Eventually(t, 15*time.Second, func() error {
		if n := h.countRows(`SELECT count(*) FROM outbox`); n != 0 {
			return fmt.Errorf("%d outbox rows left", n)
		}
		return nil
	})
	var stillRunning bool
	if err := h.svc.store.Pool().QueryRow(h.ctx, `SELECT $1::xid8 < pg_snapshot_xmax(pg_current_snapshot())
		AND NOT pg_visible_in_snapshot($1::xid8, pg_current_snapshot())`, otherXID).Scan(&stillRunning); err != nil || !stillRunning {
		t.Fatalf("the other database's transaction %s is not running any more (%v)", otherXID, err)
	}
	if err := otherTx.Rollback(h.ctx); err != nil {
		t.Fatal(err)
	}

	h.restart(false)
	for range 3 {
		h.mustSend(roomID, alice, message(t, "not yet published"))
		want++
	}
	if n, err := h.svc.store.PruneOutbox(h.ctx, 1000); err != nil || n != 0 {
		t.Fatalf("pruning unpublished rows: %d, %v; want none", n, err)
	}
	h.restart(true)
	got := h.waitPublished(roomID, want)
	if body := got[len(got)-1].out.GetEventJson(); !strings.Contains(string(body), "not yet published") {
		t.Fatalf("last published event: %s", body)
	}
}

// insertOutboxCopy inserts, in tx, a copy of the first outbox row (only
// positions and transactions matter to these tests) and returns its
// position.
func (h *harness) insertOutboxCopy(tx pgx.Tx) int64 {
	h.t.Helper()
	var pos int64
	if err := tx.QueryRow(h.ctx, `INSERT INTO outbox (room_nid, event_nid, added_state_nids, removed_state_nids)
		SELECT room_nid, event_nid, '{}', '{}' FROM outbox ORDER BY stream_pos LIMIT 1 RETURNING stream_pos`).Scan(&pos); err != nil {
		h.t.Fatal(err)
	}
	return pos
}
