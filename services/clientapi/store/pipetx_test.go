package store

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// A pipelined transaction is one transaction: what it wrote is there after
// its commit, and nothing of it after a failure, whether the failure is
// in its first statement (sent with BEGIN), in the middle (returned by f)
// or in the batch sent with COMMIT. Each way of starting it (SendBatch,
// Exec, Query, QueryRow) begins the transaction.
func TestPipeTx(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.db.Exec(ctx, `CREATE TABLE pipe_test (k text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	insert := func(k string) *pgx.Batch {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO pipe_test (k) VALUES ($1)`, k)
		return b
	}
	has := func(k string) bool {
		var ok bool
		if err := st.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pipe_test WHERE k = $1)`, k).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	inTx := func(tx *pipeTx) error {
		// The insert before assigned a transaction ID, which a
		// statement of its own (outside a transaction block) would not
		// see.
		var in bool
		err := tx.QueryRow(ctx, `SELECT pg_current_xact_id_if_assigned() IS NOT NULL`).Scan(&in)
		if err == nil && !in {
			return errors.New("not inside a transaction block")
		}
		return err
	}
	starts := map[string]func(tx *pipeTx, k string) error{
		"SendBatch": func(tx *pipeTx, k string) error { return tx.SendBatch(ctx, insert(k)).Close() },
		"Exec": func(tx *pipeTx, k string) error {
			_, err := tx.Exec(ctx, `INSERT INTO pipe_test (k) VALUES ($1)`, k)
			return err
		},
		"Query": func(tx *pipeTx, k string) error {
			rows, err := tx.Query(ctx, `INSERT INTO pipe_test (k) VALUES ($1) RETURNING k`, k)
			if err != nil {
				return err
			}
			var got []string
			for rows.Next() {
				var s string
				if err := rows.Scan(&s); err != nil {
					return err
				}
				got = append(got, s)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if len(got) != 1 || got[0] != k {
				return errors.New("wrong rows")
			}
			return nil
		},
		"QueryRow": func(tx *pipeTx, k string) error {
			var s string
			return tx.QueryRow(ctx, `INSERT INTO pipe_test (k) VALUES ($1) RETURNING k`, k).Scan(&s)
		},
	}
	for name, start := range starts {
		t.Run(name, func(t *testing.T) {
			// Committed with the last batch.
			err := st.inPipeTx(ctx, func(tx *pipeTx) (*pgx.Batch, error) {
				if err := start(tx, name+"-a"); err != nil {
					return nil, err
				}
				if err := inTx(tx); err != nil {
					return nil, err
				}
				return insert(name + "-b"), nil
			})
			if err != nil || !has(name+"-a") || !has(name+"-b") {
				t.Fatalf("commit: err %v, rows %v %v", err, has(name+"-a"), has(name+"-b"))
			}
			// f fails: rolled back.
			boom := errors.New("boom")
			err = st.inPipeTx(ctx, func(tx *pipeTx) (*pgx.Batch, error) {
				if err := start(tx, name+"-c"); err != nil {
					return nil, err
				}
				return nil, boom
			})
			if !errors.Is(err, boom) || has(name+"-c") {
				t.Fatalf("f failed: err %v, row kept %v", err, has(name+"-c"))
			}
			// The batch sent with COMMIT fails (duplicate key): rolled back.
			err = st.inPipeTx(ctx, func(tx *pipeTx) (*pgx.Batch, error) {
				if err := start(tx, name+"-d"); err != nil {
					return nil, err
				}
				return insert(name + "-a"), nil
			})
			if err == nil || has(name+"-d") {
				t.Fatalf("last batch failed: err %v, row kept %v", err, has(name+"-d"))
			}
			// The first statement fails: nothing kept, and the
			// connection is usable afterwards.
			err = st.inPipeTx(ctx, func(tx *pipeTx) (*pgx.Batch, error) {
				if err := start(tx, name+"-a"); err != nil {
					return nil, err
				}
				return insert(name + "-e"), nil
			})
			if err == nil || has(name+"-e") {
				t.Fatalf("first statement failed: err %v, row kept %v", err, has(name+"-e"))
			}
		})
	}
	// A transaction that sends nothing commits nothing and costs nothing;
	// one that sends only its last batch commits it.
	if err := st.inPipeTx(ctx, func(*pipeTx) (*pgx.Batch, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if err := st.inPipeTx(ctx, func(*pipeTx) (*pgx.Batch, error) { return insert("only-last"), nil }); err != nil || !has("only-last") {
		t.Fatalf("only a last batch: err %v", err)
	}
	// Every connection went back to the pool idle (none left in a
	// transaction).
	var open int
	if err := st.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND state LIKE 'idle in transaction%'`).Scan(&open); err != nil {
		t.Fatal(err)
	}
	if open != 0 {
		t.Fatalf("%d connections idle in a transaction", open)
	}
}
