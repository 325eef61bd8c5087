package loadgen

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DatabaseSize returns pg_database_size of the database url names.
func DatabaseSize(ctx context.Context, url string) (int64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&n)
	return n, err
}

// Statement is one normalised SQL statement's share of the database's
// work during a profiled phase, from pg_stat_statements.
type Statement struct {
	Calls   int64   `json:"calls"`
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
	Rows    int64   `json:"rows"`
	Query   string  `json:"query"`
}

// statementStats reads pg_stat_statements in the target's database. It is
// optional: a server without the module loaded (shared_preload_libraries)
// or a role that may not create the extension simply gets no statements.
type statementStats struct{ url string }

// reset creates the extension if needed and zeroes its counters; it
// reports whether statistics are available.
func (s statementStats) reset(ctx context.Context) bool {
	if s.url == "" {
		return false
	}
	conn, err := pgx.Connect(ctx, s.url)
	if err != nil {
		return false
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		return false
	}
	_, err = conn.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	return err == nil
}

// top returns the n statements with the most total execution time (which
// includes time waiting for locks) since the reset.
func (s statementStats) top(ctx context.Context, n int) ([]Statement, error) {
	conn, err := pgx.Connect(ctx, s.url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT calls, total_exec_time, total_exec_time / GREATEST(calls, 1), rows,
			left(regexp_replace(query, '\s+', ' ', 'g'), 200)
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC LIMIT $1`, n)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Statement, error) {
		var st Statement
		err := r.Scan(&st.Calls, &st.TotalMS, &st.MeanMS, &st.Rows, &st.Query)
		return st, err
	})
}

// totals returns the calls and execution time of all statements since the
// reset (BEGIN and COMMIT included: pg_stat_statements tracks utility
// statements by default).
func (s statementStats) totals(ctx context.Context) (calls int64, totalMS float64, err error) {
	conn, err := pgx.Connect(ctx, s.url)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, `SELECT COALESCE(sum(calls), 0)::bigint, COALESCE(sum(total_exec_time), 0)
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&calls, &totalMS)
	return calls, totalMS, err
}

// PostgresSettings reads settings of the server's PostgreSQL as
// "name=value ..." (for a run's results: they say, for one, whether the
// run measured a durable cluster).
func PostgresSettings(ctx context.Context, url string, names ...string) (string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", fmt.Errorf("read PostgreSQL settings: %w", err)
	}
	defer conn.Close(ctx)
	var out []string
	for _, n := range names {
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", n).Scan(&v); err != nil {
			return "", fmt.Errorf("read PostgreSQL setting %s: %w", n, err)
		}
		out = append(out, n+"="+v)
	}
	return strings.Join(out, " "), nil
}
