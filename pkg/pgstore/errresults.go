package pgstore

import (
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrRow is a pgx.Row that fails with Err: what a connection wrapper
// returns from QueryRow when it cannot send the statement.
type ErrRow struct{ Err error }

// Scan returns the error.
func (r ErrRow) Scan(...any) error { return r.Err }

// ErrBatch is a pgx.BatchResults that fails with Err: what a connection
// wrapper returns from SendBatch when it cannot send the batch.
type ErrBatch struct{ Err error }

func (b ErrBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.Err }
func (b ErrBatch) Query() (pgx.Rows, error)         { return nil, b.Err }
func (b ErrBatch) QueryRow() pgx.Row                { return ErrRow{b.Err} }
func (b ErrBatch) Close() error                     { return b.Err }
func (b ErrBatch) Tx() pgx.Tx                       { return nil }
