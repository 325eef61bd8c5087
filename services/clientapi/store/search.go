package store

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
)

// SearchConfig is the PostgreSQL text search configuration of the search
// index (stemming and stop words), the one Synapse uses.
const SearchConfig = "english"

// SearchQuery selects matching events for POST /search.
type SearchQuery struct {
	// TSQuery is to_tsquery input (see the client-API's search.go).
	TSQuery string
	// Rooms and Upto pair up: events of Rooms[i] with pos <= Upto[i].
	Rooms []string
	Upto  []int64
	// Keys restricts the keys (content.body, ...); empty: all.
	Keys []string
	// Senders restricts the senders; empty: all.
	Senders []string
	// ByRank orders by rank (then newest first); otherwise newest first.
	ByRank bool
	// After, when set, continues after this result (in the order above).
	After *SearchCursor
	Limit int
}

// SearchCursor is a position in a result list: rank and stream position.
type SearchCursor struct {
	Rank float32
	Pos  int64
}

// SearchHit is a matching event and its rank (ts_rank_cd).
type SearchHit struct {
	StoredEvent
	Rank float32
}

// Search returns up to Limit matching events after the cursor, in order.
// History visibility is the caller's to apply.
func (r Reader) Search(ctx context.Context, q SearchQuery) ([]SearchHit, error) {
	if len(q.Rooms) == 0 {
		return nil, nil
	}
	if q.Keys == nil {
		q.Keys = []string{}
	}
	if q.Senders == nil {
		q.Senders = []string{}
	}
	args := []any{q.TSQuery, q.Rooms, q.Upto, q.Keys, q.Senders, q.Limit}
	where := ""
	order := "e.pos DESC"
	if q.ByRank {
		order = "rank DESC, e.pos DESC"
	}
	if q.After != nil {
		if q.ByRank {
			args = append(args, q.After.Rank, q.After.Pos)
			where = " AND (ts_rank_cd(e.search_vec, q.query), e.pos) < ($7::real, $8::bigint)"
		} else {
			args = append(args, q.After.Pos)
			where = " AND e.pos < $7::bigint"
		}
	}
	cols := strings.ReplaceAll(eventColsPrefixed, "%", "e.")
	rows, err := r.q.Query(ctx, `SELECT `+cols+`, ts_rank_cd(e.search_vec, q.query) AS rank
		FROM to_tsquery('`+SearchConfig+`', $1) AS q(query),
			unnest($2::text[], $3::bigint[]) AS r(room_id, upto)
			JOIN sync_events e ON e.room_id = r.room_id AND e.pos <= r.upto
		WHERE e.search_vec @@ q.query
			AND (cardinality($4::text[]) = 0 OR e.search_key = ANY($4))
			AND (cardinality($5::text[]) = 0 OR e.sender = ANY($5))`+where+`
		ORDER BY `+order+` LIMIT $6`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SearchHit
	for rows.Next() {
		var h SearchHit
		e := &h.StoredEvent
		if err := rows.Scan(&e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.JSON, &e.TxnDeviceID, &e.TxnID,
			&e.VisBefore, &e.VisAfter, &h.Rank); err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// eventColsPrefixed is eventCols with a table placeholder ("%").
const eventColsPrefixed = `%pos, %event_id, %room_id, %type, %state_key, %sender, %event, COALESCE(%txn_device_id, ''), COALESCE(%txn_id, ''),
	COALESCE(%visibility_before, 'shared'), COALESCE(%visibility_after, 'shared')`

// SearchCount counts the matches of q (its cursor and limit ignored) up
// to max rows, returning the light rows (no JSON) so the caller can apply
// history visibility, and the total number of matches when there are
// more than max.
func (r Reader) SearchCount(ctx context.Context, q SearchQuery, max int) (rows []StoredEvent, total int64, err error) {
	if len(q.Rooms) == 0 {
		return nil, 0, nil
	}
	if q.Keys == nil {
		q.Keys = []string{}
	}
	if q.Senders == nil {
		q.Senders = []string{}
	}
	const from = `FROM to_tsquery('` + SearchConfig + `', $1) AS q(query),
			unnest($2::text[], $3::bigint[]) AS r(room_id, upto)
			JOIN sync_events e ON e.room_id = r.room_id AND e.pos <= r.upto
		WHERE e.search_vec @@ q.query
			AND (cardinality($4::text[]) = 0 OR e.search_key = ANY($4))
			AND (cardinality($5::text[]) = 0 OR e.sender = ANY($5))`
	res, err := r.q.Query(ctx, `SELECT e.pos, e.room_id, e.type, e.state_key, e.sender,
			COALESCE(e.visibility_before, 'shared'), COALESCE(e.visibility_after, 'shared') `+from+` LIMIT $6`,
		q.TSQuery, q.Rooms, q.Upto, q.Keys, q.Senders, max+1)
	if err != nil {
		return nil, 0, err
	}
	rows, err = pgx.CollectRows(res, func(row pgx.CollectableRow) (StoredEvent, error) {
		var e StoredEvent
		err := row.Scan(&e.Pos, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.VisBefore, &e.VisAfter)
		return e, err
	})
	if err != nil || len(rows) <= max {
		return rows, int64(len(rows)), err
	}
	err = r.q.QueryRow(ctx, `SELECT count(*) `+from, q.TSQuery, q.Rooms, q.Upto, q.Keys, q.Senders).Scan(&total)
	return rows[:max], total, err
}

// Headlines returns, for each text, the words ts_headline marks as
// matching the query: the search response's highlights (stemming may
// make them differ from the search terms).
func (r Reader) Headlines(ctx context.Context, tsquery string, texts []string) ([]string, error) {
	if len(texts) == 0 {
		return nil, nil
	}
	rows, err := r.q.Query(ctx, `SELECT ts_headline('`+SearchConfig+`', t, to_tsquery('`+SearchConfig+`', $1),
			'StartSel="`+hlStart+`", StopSel="`+hlStop+`", HighlightAll=true')
		FROM unnest($2::text[]) AS t`, tsquery, texts)
	if err != nil {
		return nil, err
	}
	heads, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, h := range heads {
		for {
			_, rest, ok := strings.Cut(h, hlStart)
			if !ok {
				break
			}
			word, after, _ := strings.Cut(rest, hlStop)
			h = after
			if word != "" && !seen[word] {
				seen[word] = true
				out = append(out, word)
			}
		}
	}
	return out, nil
}

// Highlight markers: control characters no message body is expected to
// hold in the middle of a word.
const (
	hlStart = "\x01"
	hlStop  = "\x02"
)
