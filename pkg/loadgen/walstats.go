package loadgen

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// walCounters are the cluster's commit and WAL flush counts
// (pg_stat_database.xact_commit summed over databases, pg_stat_wal's
// wal_write and wal_sync). With synchronous_commit on, a commit that
// wrote waits for a WAL flush, but concurrent commits share one:
// flushes per event says how much the database groups them (and what
// group commit in the server could still save). Counters of the cluster
// (every database, background writers included), updated by backends
// about once a second, so they are approximate over a short step.
type walCounters struct {
	commits, writes, syncs int64
	ok                     bool
}

// readWAL reads the counters; without a database URL, or on a server that
// has no pg_stat_wal (before PostgreSQL 14), ok is false.
func readWAL(ctx context.Context, url string) walCounters {
	if url == "" {
		return walCounters{}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return walCounters{}
	}
	defer conn.Close(ctx)
	var c walCounters
	err = conn.QueryRow(ctx, `SELECT (SELECT COALESCE(sum(xact_commit), 0)::bigint FROM pg_stat_database),
			w.wal_write, w.wal_sync FROM pg_stat_wal w`).Scan(&c.commits, &c.writes, &c.syncs)
	c.ok = err == nil
	return c
}

// perEvent adds the differences since before, per event, to extra.
func (c walCounters) perEvent(before walCounters, events int, extra map[string]any) {
	if !c.ok || !before.ok || events == 0 {
		return
	}
	n := float64(events)
	extra["db_commits_per_event"] = float64(c.commits-before.commits) / n
	extra["db_wal_writes_per_event"] = float64(c.writes-before.writes) / n
	extra["db_wal_syncs_per_event"] = float64(c.syncs-before.syncs) / n
}
