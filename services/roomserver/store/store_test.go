package store

import (
	"reflect"
	"testing"
)

// TestCombineWrites: queued writes to different tables become one
// statement, each but the last a CTE, with their parameters renumbered in
// order; a second write to a table starts a new statement.
func TestCombineWrites(t *testing.T) {
	p := &pipeConn{}
	p.queue("events", `INSERT INTO events (a, b) VALUES ($1, $2)`, 1, 2)
	p.queue("rooms", `UPDATE rooms SET x = $2 WHERE room_nid = $1`, 3, 4)
	p.queue("outbox", `INSERT INTO outbox (c) VALUES ($1)`, 5)
	p.queue("rooms", `UPDATE rooms SET x = $2 WHERE room_nid = $1`, 6, 7)
	b := p.take()
	if len(p.pending) != 0 {
		t.Fatal("take left writes queued")
	}
	if len(b.QueuedQueries) != 2 {
		t.Fatalf("%d statements, want 2", len(b.QueuedQueries))
	}
	first, second := b.QueuedQueries[0], b.QueuedQueries[1]
	want := `WITH w0 AS (INSERT INTO events (a, b) VALUES ($1, $2)), w1 AS (UPDATE rooms SET x = $4 WHERE room_nid = $3) INSERT INTO outbox (c) VALUES ($5)`
	if first.SQL != want || !reflect.DeepEqual(first.Arguments, []any{1, 2, 3, 4, 5}) {
		t.Fatalf("first statement %q %v", first.SQL, first.Arguments)
	}
	if second.SQL != `UPDATE rooms SET x = $2 WHERE room_nid = $1` || !reflect.DeepEqual(second.Arguments, []any{6, 7}) {
		t.Fatalf("second statement %q %v", second.SQL, second.Arguments)
	}
	if got := renumberParams(`$1, $10, $2::text`, 9); got != `$10, $19, $11::text` {
		t.Fatalf("renumbered: %s", got)
	}
}
