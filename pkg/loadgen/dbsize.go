package loadgen

import (
	"context"

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
