package store

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// A snapshot's reads, whether a batch carrying its BEGIN, a plain query
// or the batch carrying its COMMIT, all see the data of its first read;
// the connection goes back to the pool outside any transaction, also
// when a read fails.
func TestSnapshotPipelinesBeginAndCommit(t *testing.T) {
	ctx := context.Background()
	url := testkit.Postgres(t)
	st, err := Open(ctx, url, 1) // one connection: the snapshot's is reused
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.db.Exec(ctx, `CREATE TABLE snapshot_probe (n int)`); err != nil {
		t.Fatal(err)
	}
	var schema string
	if err := st.db.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	count := func(b *Batch, out *int) {
		b.b.Queue(`SELECT count(*) FROM snapshot_probe`).QueryRow(func(row pgx.Row) error { return row.Scan(out) })
	}
	// commitOne inserts a row from another connection while the snapshot
	// holds the pool's only one.
	commitOne := func() {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `INSERT INTO `+pgx.Identifier{schema, "snapshot_probe"}.Sanitize()+` VALUES (1)`); err != nil {
			t.Fatal(err)
		}
	}
	var pid uint32
	if err := st.db.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	// The pool's connection is idle, out of any transaction, and the
	// same one (the pool closes a connection returned in a transaction).
	checkIdle := func() {
		t.Helper()
		conn, err := st.db.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if s := conn.Conn().PgConn().TxStatus(); s != 'I' {
			t.Fatalf("connection left with transaction status %q, want idle", s)
		}
		var iso string
		if err := conn.QueryRow(ctx, `SELECT current_setting('transaction_isolation')`).Scan(&iso); err != nil {
			t.Fatal(err)
		}
		if iso != "read committed" {
			t.Fatalf("connection left in a %s transaction", iso)
		}
		if got := conn.Conn().PgConn().PID(); got != pid {
			t.Fatalf("the pool's connection was replaced (backend %d, was %d)", got, pid)
		}
	}

	var first, plain, last int
	err = st.Snapshot(ctx, func(rd Reader) error {
		b := &Batch{}
		count(b, &first)
		if err := rd.Send(ctx, b); err != nil {
			return err
		}
		commitOne()
		if err := rd.q.QueryRow(ctx, `SELECT count(*) FROM snapshot_probe`).Scan(&plain); err != nil {
			return err
		}
		commitOne()
		b = &Batch{}
		count(b, &last)
		if err := rd.SendLast(ctx, b); err != nil {
			return err
		}
		if err := rd.q.QueryRow(ctx, `SELECT 1`).Scan(new(int)); !errors.Is(err, errSnapshotDone) {
			t.Errorf("read after SendLast: %v, want errSnapshotDone", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if first != 0 || plain != 0 || last != 0 {
		t.Fatalf("snapshot counts %d, %d, %d; want 0 each (the inserts came after its first read)", first, plain, last)
	}
	checkIdle()
	var now int
	if err := st.db.QueryRow(ctx, `SELECT count(*) FROM snapshot_probe`).Scan(&now); err != nil || now != 2 {
		t.Fatalf("after the snapshot: %d rows (%v), want 2", now, err)
	}

	// A failing last batch: the error is returned and the transaction
	// still ends.
	err = st.Snapshot(ctx, func(rd Reader) error {
		b := &Batch{}
		b.b.Queue(`SELECT no_such_column FROM snapshot_probe`)
		return rd.SendLast(ctx, b)
	})
	if err == nil {
		t.Fatal("a failing batch returned no error")
	}
	checkIdle()

	// fn failing after a plain read.
	boom := errors.New("boom")
	err = st.Snapshot(ctx, func(rd Reader) error {
		if err := rd.q.QueryRow(ctx, `SELECT 1`).Scan(new(int)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Snapshot returned %v, want fn's error", err)
	}
	checkIdle()
}
