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

// TestCoalesceWrites: single-row inserts of one statement with only
// superseded writes between them become one multi-row insert; of the
// writes setting one row, the last stays; any other write between
// inserts keeps them apart; and a merged insert stays under the
// parameter bound.
func TestCoalesceWrites(t *testing.T) {
	const ev = `INSERT INTO events (a, b) VALUES ($1, $2)`
	const room = `UPDATE rooms SET x = $2 WHERE room_nid = $1`
	const out = `INSERT INTO outbox (c) VALUES ($1)`
	p := &pipeConn{}
	p.queueRow("events", ev, 1, 2)
	p.queueSet("rooms", "rooms:9", room, 9, 100)
	p.queueRow("events", ev, 3, 4)
	p.queueSet("rooms", "rooms:9", room, 9, 101)
	p.queueRow("events", ev, 5, 6)
	p.queueSet("rooms", "rooms:9", room, 9, 102)
	p.queueRow("outbox", out, 7)
	p.queueRow("outbox", out, 8)
	p.queue("transactions", `INSERT INTO transactions (d) VALUES ($1)`, 10)
	p.queueRow("outbox", out, 11)
	b := p.take()
	if len(b.QueuedQueries) != 2 {
		t.Fatalf("%d statements, want 2: %+v", len(b.QueuedQueries), b.QueuedQueries)
	}
	first, second := b.QueuedQueries[0], b.QueuedQueries[1]
	want := `WITH w0 AS (INSERT INTO events (a, b) VALUES ($1, $2), ($3, $4), ($5, $6)), w1 AS (UPDATE rooms SET x = $8 WHERE room_nid = $7), ` +
		`w2 AS (INSERT INTO outbox (c) VALUES ($9), ($10)) INSERT INTO transactions (d) VALUES ($11)`
	if first.SQL != want || !reflect.DeepEqual(first.Arguments, []any{1, 2, 3, 4, 5, 6, 9, 102, 7, 8, 10}) {
		t.Fatalf("first statement %q %v", first.SQL, first.Arguments)
	}
	if second.SQL != out || !reflect.DeepEqual(second.Arguments, []any{11}) {
		t.Fatalf("second statement %q %v", second.SQL, second.Arguments)
	}

	// An insert with anything after its tuple is not joined.
	p.queueRow("outbox", out+" ON CONFLICT DO NOTHING", 1)
	p.queueRow("outbox", out+" ON CONFLICT DO NOTHING", 2)
	if b := p.take(); len(b.QueuedQueries) != 2 {
		t.Fatalf("inserts with ON CONFLICT: %d statements, want 2", len(b.QueuedQueries))
	}

	// Past the parameter bound, a new insert starts.
	var ws []queuedWrite
	for i := range maxRowParams/2 + 1 {
		ws = append(ws, queuedWrite{table: "events", sql: ev, args: []any{i, i}, row: true})
	}
	merged := coalesce(ws)
	if len(merged) != 2 || len(merged[0].args) != maxRowParams || len(merged[1].args) != 2 {
		t.Fatalf("%d inserts of %d and %d parameters", len(merged), len(merged[0].args), len(merged[len(merged)-1].args))
	}
}
