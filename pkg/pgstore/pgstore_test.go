package pgstore_test

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"

	"github.com/myelin-chat/myelin/pkg/pgstore"
	"github.com/myelin-chat/myelin/pkg/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestMigrationsApplyOnceInOrder(t *testing.T) {
	ctx := context.Background()
	url := testkit.Postgres(t)
	v1 := fstest.MapFS{
		"m/001_init.sql": {Data: []byte(`CREATE TABLE things (id INT PRIMARY KEY);`)},
	}
	pool, err := pgstore.Open(ctx, url, "svc_a", 2, v1, "m")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO things VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	pool.Close()

	// A second start adds one migration; the first is not re-run (it would
	// fail: the table exists) and data is kept.
	v2 := fstest.MapFS{
		"m/001_init.sql": v1["m/001_init.sql"],
		"m/002_more.sql": {Data: []byte(`ALTER TABLE things ADD COLUMN name TEXT NOT NULL DEFAULT 'x';`)},
	}
	pool, err = pgstore.Open(ctx, url, "svc_a", 2, v2, "m")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var name string
	if err := pool.QueryRow(ctx, `SELECT name FROM things WHERE id=1`).Scan(&name); err != nil || name != "x" {
		t.Fatalf("row after migration: %q %v", name, err)
	}
	// Tables live in the service's own schema.
	var schema string
	if err := pool.QueryRow(ctx, `SELECT table_schema FROM information_schema.tables WHERE table_name='things'`).Scan(&schema); err != nil || schema != "svc_a" {
		t.Fatalf("schema = %q, %v", schema, err)
	}
}

func TestFailedMigrationLeavesNoTrace(t *testing.T) {
	ctx := context.Background()
	url := testkit.Postgres(t)
	bad := fstest.MapFS{
		"m/001_init.sql": {Data: []byte(`CREATE TABLE a (id INT); CREATE TABLE a (id INT);`)},
	}
	if _, err := pgstore.Open(ctx, url, "svc_b", 2, bad, "m"); err == nil {
		t.Fatal("broken migration applied")
	}
	good := fstest.MapFS{"m/001_init.sql": {Data: []byte(`CREATE TABLE a (id INT);`)}}
	pool, err := pgstore.Open(ctx, url, "svc_b", 2, good, "m")
	if err != nil {
		t.Fatalf("fixed migration after a failed one: %v", err)
	}
	pool.Close()
}

func TestBadMigrationNames(t *testing.T) {
	url := testkit.Postgres(t)
	for _, fs := range []fstest.MapFS{
		{"m/init.sql": {Data: []byte(`SELECT 1`)}},
		{"m/001_a.sql": {Data: []byte(`SELECT 1`)}, "m/001_b.sql": {Data: []byte(`SELECT 1`)}},
	} {
		if _, err := pgstore.Open(context.Background(), url, "svc_c", 2, fs, "m"); !errors.Is(err, pgstore.ErrBadMigration) {
			t.Errorf("want ErrBadMigration, got %v", err)
		}
	}
	if _, err := pgstore.Open(context.Background(), url, "Bad-Schema", 2, fstest.MapFS{}, "m"); err == nil {
		t.Error("invalid schema name accepted")
	}
}
