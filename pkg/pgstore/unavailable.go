package pgstore

import (
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// IsUnavailable reports whether err means that the database cannot be
// reached or does not take work right now, rather than that the statement
// or the data is wrong: the connection could not be made, the server ended
// it (shutdown, restart, an operator), ran out of connections or other
// resources, or is a standby (mid-failover). Such a failure is the
// server's to recover from, and a client may retry the request later
// (503 at the HTTP edge, codes.Unavailable over gRPC).
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return unavailableCode(pgErr.Code)
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	return errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		// A statement the server never received (the connection was
		// already broken): pgconn marks it safe to retry.
		pgconn.SafeToRetry(err)
}

// unavailableCode: SQLSTATE class 08 (connection exception), class 53
// (insufficient resources: disk full, out of memory, too many
// connections), 57P01-57P03 (the server is shutting down, crashed or
// starting) and 25006 (a read-only transaction: connected to a standby).
func unavailableCode(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "25006":
		return true
	}
	return false
}
