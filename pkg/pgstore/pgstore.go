// Package pgstore opens a service's PostgreSQL pool inside the service's own
// schema and applies its embedded, versioned migrations.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrBadMigration is returned for a migration file whose name is not
// NNN_description.sql or whose version repeats.
var ErrBadMigration = errors.New("bad migration file")

var schemaName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// Open connects to url with search_path set to schema, creating the schema
// if needed, and applies the migrations in dir of migrations (files named
// 001_init.sql, 002_more.sql, ...). Each migration runs in its own
// transaction; an advisory lock keeps concurrent starters from racing.
func Open(ctx context.Context, url, schema string, maxConns int32, migrations fs.FS, dir string) (*pgxpool.Pool, error) {
	if !schemaName.MatchString(schema) {
		return nil, fmt.Errorf("invalid schema name %q", schema)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	// The description cache serves only QueryExecModeCacheDescribe; in
	// any other mode (the default, QueryExecModeCacheStatement, uses the
	// statement cache) it is never used but still costs each connection
	// a map sized for 512 entries (about 26 kB, #20).
	if cfg.ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeCacheDescribe {
		cfg.ConnConfig.DescriptionCacheCapacity = 0
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := migrate(ctx, pool, schema, migrations, dir); err != nil {
		pool.Close()
		return nil, fmt.Errorf("migrate schema %s: %w", schema, err)
	}
	return pool, nil
}

type migration struct {
	version int
	name    string
	sql     string
}

func load(migrations fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`^(\d+)_[a-z0-9_]+\.sql$`)
	seen := map[int]bool{}
	var out []migration
	for _, e := range entries {
		m := re.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("%w: %s", ErrBadMigration, e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		if seen[v] {
			return nil, fmt.Errorf("%w: version %d twice", ErrBadMigration, v)
		}
		seen[v] = true
		body, err := fs.ReadFile(migrations, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, migrations fs.FS, dir string) error {
	list, err := load(migrations, dir)
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	// One lock per schema, held for the whole run.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('myelin.migrate.' || $1))`, schema); err != nil {
		return err
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('myelin.migrate.' || $1))`, schema) //nolint:errcheck
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize()); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	for _, m := range list {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version=$1)`, m.version).Scan(&exists); err != nil {
			return err
		}
		if exists {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}
