package history

// Server-side search (POST /search, category room_events). The consumer
// indexes each m.room.message body, m.room.name name and m.room.topic
// topic in sync_events (a tsvector with a GIN index, store/search.go); a
// redaction clears the index entry. A search reads the matches in the
// rooms the user is or was joined to (up to their leave), newest first or
// by rank, and keeps those the history visibility rules (visibility.go)
// and the request's filter allow; pages continue from an opaque
// next_batch cursor (rank, position), optionally restricted to one group.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strings"
	"unicode"

	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Search limits.
const (
	defaultSearchLimit = 10
	maxSearchLimit     = 100
	// searchChunk is how many matches are read at a time while looking
	// for visible ones.
	searchChunk = 200
	// searchCountScan is how many matches the count checks one by one;
	// beyond it the count is an estimate, as the spec allows.
	searchCountScan     = 10000
	defaultContextLimit = 5
	maxSearchContext    = 100
)

// buildTSQuery turns a search term into to_tsquery input. Words match as
// prefixes ("mart" finds "martians"), "quoted words" match as a phrase,
// -word excludes, and "or" between two terms makes either match; all
// other terms must all match. Every word is quoted, so no input is a
// syntax error; words that are stop words or punctuation drop out.
func buildTSQuery(term string) string {
	quote := func(w string) string {
		return "'" + strings.ReplaceAll(strings.ReplaceAll(w, `\`, `\\`), "'", "''") + "'"
	}
	var b strings.Builder
	op := ""
	rs := []rune(term)
	for i := 0; i < len(rs); {
		if unicode.IsSpace(rs[i]) {
			i++
			continue
		}
		var part string
		if rs[i] == '"' {
			j := i + 1
			for j < len(rs) && rs[j] != '"' {
				j++
			}
			phrase := strings.TrimSpace(string(rs[i+1 : min(j, len(rs))]))
			i = j + 1
			if phrase == "" {
				continue
			}
			part = quote(phrase)
		} else {
			j := i
			for j < len(rs) && !unicode.IsSpace(rs[j]) {
				j++
			}
			word := string(rs[i:j])
			i = j
			switch {
			case strings.EqualFold(word, "or"):
				if b.Len() > 0 {
					op = " | "
				}
				continue
			case strings.HasPrefix(word, "-") && len(word) > 1:
				part = "!" + quote(word[1:])
			default:
				part = quote(word) + ":*"
			}
		}
		if b.Len() > 0 {
			if op == "" {
				op = " & "
			}
			b.WriteString(op)
		}
		b.WriteString(part)
		op = ""
	}
	return b.String()
}

// searchRequest is the body of POST /search.
type searchRequest struct {
	SearchCategories *struct {
		RoomEvents *roomEventsCriteria `json:"room_events"`
	} `json:"search_categories"`
}

type roomEventsCriteria struct {
	SearchTerm   *string       `json:"search_term"`
	Keys         []string      `json:"keys"`
	Filter       *searchFilter `json:"filter"`
	OrderBy      string        `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

// searchFilter is the RoomEventFilter of a search: the event filter of
// /messages plus rooms, not_rooms and limit.
type searchFilter struct {
	clientevent.RoomEventFilter
	Rooms    *[]string `json:"rooms"`
	NotRooms []string  `json:"not_rooms"`
	Limit    *int      `json:"limit"`
}

// searchToken is the opaque next_batch: the last result returned (rank
// and position, in the request's order) and, for a group's next_batch,
// the group it continues.
type searchToken struct {
	Order      string  `json:"o"`
	Rank       float32 `json:"r,omitempty"`
	Pos        int64   `json:"p"`
	GroupKey   string  `json:"gk,omitempty"`
	GroupValue string  `json:"gv,omitempty"`
}

func (t searchToken) String() string {
	raw, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(raw)
}

func parseSearchToken(s string) (searchToken, error) {
	var t searchToken
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(raw, &t) != nil || (t.Order != orderRank && t.Order != orderRecent) ||
		(t.GroupKey != "" && t.GroupKey != groupRoom && t.GroupKey != groupSender) {
		return t, matrixhttp.InvalidParam("Invalid next_batch token")
	}
	return t, nil
}

const (
	orderRank   = "rank"
	orderRecent = "recent"
	groupRoom   = "room_id"
	groupSender = "sender"
)

// Response shapes.
type searchResponse struct {
	SearchCategories searchCategoriesResponse `json:"search_categories"`
}

type searchCategoriesResponse struct {
	RoomEvents *roomEventsResult `json:"room_events,omitempty"`
}

type roomEventsResult struct {
	Count      int64                                   `json:"count"`
	Highlights []string                                `json:"highlights"`
	Results    []searchResult                          `json:"results"`
	State      map[string][]json.RawMessage            `json:"state,omitempty"`
	Groups     map[string]map[string]*searchGroupValue `json:"groups,omitempty"`
	NextBatch  string                                  `json:"next_batch,omitempty"`
}

type searchResult struct {
	Rank    float32         `json:"rank"`
	Result  json.RawMessage `json:"result"`
	Context *searchContext  `json:"context,omitempty"`
}

type searchContext struct {
	Start        string                    `json:"start"`
	End          string                    `json:"end"`
	ProfileInfo  map[string]map[string]any `json:"profile_info,omitempty"`
	EventsBefore []json.RawMessage         `json:"events_before"`
	EventsAfter  []json.RawMessage         `json:"events_after"`
}

type searchGroupValue struct {
	NextBatch string   `json:"next_batch,omitempty"`
	Order     int      `json:"order"`
	Results   []string `json:"results"`
}

// search is POST /search.
func (s *Service) search(r *http.Request, dev *httpapi.Device) (any, error) {
	var req searchRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.SearchCategories == nil {
		return nil, matrixhttp.MissingParam("search_categories is required")
	}
	var tok *searchToken
	if v := r.URL.Query().Get("next_batch"); v != "" {
		t, err := parseSearchToken(v)
		if err != nil {
			return nil, err
		}
		tok = &t
	}
	resp := searchResponse{}
	if c := req.SearchCategories.RoomEvents; c != nil {
		res, err := s.searchRoomEvents(r, dev, c, tok)
		if err != nil {
			return nil, err
		}
		resp.SearchCategories.RoomEvents = res
	}
	return resp, nil
}

// searchPlan is a validated room_events request.
type searchPlan struct {
	tsquery string
	order   string
	limit   int
	filter  searchFilter
	groupBy []string
	query   store.SearchQuery
	visible VisibilityFilter
}

// parseCriteria validates a room_events request: the plan, and the
// event context's before and after limits.
func parseCriteria(c *roomEventsCriteria, tok *searchToken) (p searchPlan, before, after int, err error) {
	if c.SearchTerm == nil {
		return p, 0, 0, matrixhttp.MissingParam("search_term is required")
	}
	p = searchPlan{order: orderRank, limit: defaultSearchLimit}
	switch c.OrderBy {
	case "", orderRank:
	case orderRecent:
		p.order = orderRecent
	default:
		return p, 0, 0, matrixhttp.InvalidParam("order_by must be rank or recent")
	}
	for _, k := range c.Keys {
		if k != clientevent.SearchKeyBody && k != clientevent.SearchKeyName && k != clientevent.SearchKeyTopic {
			return p, 0, 0, matrixhttp.InvalidParam("Unknown search key " + k)
		}
	}
	if c.Filter != nil {
		p.filter = *c.Filter
		if l := p.filter.Limit; l != nil {
			if *l < 0 {
				return p, 0, 0, matrixhttp.InvalidParam("filter.limit must not be negative")
			}
			p.limit = min(*l, maxSearchLimit)
		}
	}
	if c.Groupings != nil {
		for _, g := range c.Groupings.GroupBy {
			if g.Key != groupRoom && g.Key != groupSender {
				return p, 0, 0, matrixhttp.InvalidParam("group_by key must be room_id or sender")
			}
			if !slices.Contains(p.groupBy, g.Key) {
				p.groupBy = append(p.groupBy, g.Key)
			}
		}
	}
	if tok != nil && tok.Order != p.order {
		return p, 0, 0, matrixhttp.InvalidParam("next_batch belongs to a search with another order_by")
	}
	before, after = defaultContextLimit, defaultContextLimit
	if ec := c.EventContext; ec != nil {
		if ec.BeforeLimit != nil {
			before = *ec.BeforeLimit
		}
		if ec.AfterLimit != nil {
			after = *ec.AfterLimit
		}
		if before < 0 || after < 0 {
			return p, 0, 0, matrixhttp.InvalidParam("event_context limits must not be negative")
		}
		before, after = min(before, maxSearchContext), min(after, maxSearchContext)
	}
	return p, before, after, nil
}

// searchRoomEvents runs one room_events search: the page after tok, its
// count, highlights, groups, contexts and state.
func (s *Service) searchRoomEvents(r *http.Request, dev *httpapi.Device, c *roomEventsCriteria, tok *searchToken) (*roomEventsResult, error) {
	ctx := r.Context()
	p, before, after, err := parseCriteria(c, tok)
	if err != nil {
		return nil, err
	}
	res := &roomEventsResult{Highlights: []string{}, Results: []searchResult{}}
	p.tsquery = buildTSQuery(*c.SearchTerm)
	if p.tsquery == "" {
		return res, nil
	}

	// The rooms the user is or was joined to, up to their leave.
	rd := s.store.Reader()
	memberships, err := rd.Memberships(ctx, dev.UserID)
	if err != nil {
		return nil, err
	}
	q := store.SearchQuery{TSQuery: p.tsquery, Keys: c.Keys, ByRank: p.order == orderRank}
	for _, m := range memberships {
		upto := int64(math.MaxInt64)
		switch {
		case m.Membership == store.MembershipJoin:
		case (m.Membership == store.MembershipLeave || m.Membership == store.MembershipBan) && m.JoinPos > 0:
			upto = m.Pos
		default:
			continue
		}
		if !p.filter.allowsRoom(m.RoomID) {
			continue
		}
		if tok != nil && tok.GroupKey == groupRoom && tok.GroupValue != m.RoomID {
			continue
		}
		q.Rooms, q.Upto = append(q.Rooms, m.RoomID), append(q.Upto, upto)
	}
	if tok != nil && tok.GroupKey == groupSender {
		q.Senders = []string{tok.GroupValue}
	}
	p.query = q
	if p.visible, err = s.newVisibilityFilter(ctx, rd, dev.UserID, q.Rooms); err != nil {
		return nil, err
	}
	var cursor *store.SearchCursor
	if tok != nil {
		cursor = &store.SearchCursor{Rank: tok.Rank, Pos: tok.Pos}
	}

	hits, err := s.searchScan(ctx, rd, p, p.query, cursor, p.limit+1)
	if err != nil {
		return nil, err
	}
	more := len(hits) > p.limit
	hits = hits[:min(len(hits), p.limit)]
	if more && len(hits) > 0 {
		last := hits[len(hits)-1]
		res.NextBatch = searchToken{Order: p.order, Rank: last.Rank, Pos: last.Pos, GroupKey: tokGroupKey(tok), GroupValue: tokGroupValue(tok)}.String()
	}
	if res.Count, err = s.searchCount(ctx, rd, p); err != nil {
		return nil, err
	}

	events := make([]store.StoredEvent, len(hits))
	for i, h := range hits {
		events[i] = h.StoredEvent
	}
	rendered, err := s.RenderAll(ctx, rd, dev, events, true)
	if err != nil {
		return nil, err
	}
	for i, h := range hits {
		sr := searchResult{Rank: h.Rank, Result: rendered[i]}
		if c.EventContext != nil {
			if sr.Context, err = s.searchEventContext(ctx, rd, dev, h.StoredEvent, before, after, c.EventContext.IncludeProfile); err != nil {
				return nil, err
			}
		}
		res.Results = append(res.Results, sr)
	}
	if res.Highlights, err = s.searchHighlights(ctx, rd, p.tsquery, events); err != nil {
		return nil, err
	}
	if len(p.groupBy) > 0 {
		if res.Groups, err = s.searchGroups(ctx, rd, p, hits); err != nil {
			return nil, err
		}
	}
	if c.IncludeState {
		if res.State, err = s.searchState(r, dev, events); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func tokGroupKey(t *searchToken) string {
	if t == nil {
		return ""
	}
	return t.GroupKey
}

func tokGroupValue(t *searchToken) string {
	if t == nil {
		return ""
	}
	return t.GroupValue
}

// allowsRoom applies the filter's rooms and not_rooms.
func (f searchFilter) allowsRoom(roomID string) bool {
	if slices.Contains(f.NotRooms, roomID) {
		return false
	}
	return f.Rooms == nil || slices.Contains(*f.Rooms, roomID)
}

// searchScan reads matches after cursor until it has want visible ones
// the filter allows, or the matches run out.
func (s *Service) searchScan(ctx context.Context, rd store.Reader, p searchPlan, q store.SearchQuery, cursor *store.SearchCursor, want int) ([]store.SearchHit, error) {
	var out []store.SearchHit
	q.After = cursor
	q.Limit = searchChunk
	for len(out) < want {
		chunk, err := rd.Search(ctx, q)
		if err != nil {
			return nil, err
		}
		for _, h := range chunk {
			// An erased copy has lost the content that matched.
			if p.filter.Allows(h.StoredEvent) && p.visible.canSee(h.StoredEvent) && !p.visible.servedErased(h.StoredEvent) {
				h.Membership = p.visible.membershipAt(h.StoredEvent)
				out = append(out, h)
			}
		}
		if len(chunk) < q.Limit {
			break
		}
		last := chunk[len(chunk)-1]
		q.After = &store.SearchCursor{Rank: last.Rank, Pos: last.Pos}
	}
	return out[:min(len(out), want)], nil
}

// searchCount counts the visible matches; past searchCountScan matches it
// scales the total by the visible share of those it checked.
func (s *Service) searchCount(ctx context.Context, rd store.Reader, p searchPlan) (int64, error) {
	rows, total, err := rd.SearchCount(ctx, p.query, searchCountScan)
	if err != nil {
		return 0, err
	}
	// The light rows have no content, so contains_url is not applied here
	// (the count may be high for such filters).
	f := p.filter
	f.ContainsURL = nil
	var visible int64
	for _, e := range rows {
		if f.Allows(e) && p.visible.canSee(e) && !p.visible.servedErased(e) {
			visible++
		}
	}
	if len(rows) == 0 || total <= int64(len(rows)) {
		return visible, nil
	}
	return visible * total / int64(len(rows)), nil
}

// searchHighlights returns the words of the results that matched.
func (s *Service) searchHighlights(ctx context.Context, rd store.Reader, tsquery string, events []store.StoredEvent) ([]string, error) {
	var texts []string
	for _, e := range events {
		var ev struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(e.JSON, &ev) != nil {
			continue
		}
		if _, text := clientevent.SearchTextOf(e.Type, ev.Content); text != "" {
			texts = append(texts, text)
		}
	}
	out, err := rd.Headlines(ctx, tsquery, texts)
	if out == nil {
		out = []string{}
	}
	return out, err
}

// searchGroups partitions the page's results by each requested key. A
// group's order is the rank of its first result in the page (1 = first),
// and it has a next_batch when more visible results of that group follow
// its last one on this page.
func (s *Service) searchGroups(ctx context.Context, rd store.Reader, p searchPlan, hits []store.SearchHit) (map[string]map[string]*searchGroupValue, error) {
	out := map[string]map[string]*searchGroupValue{}
	for _, key := range p.groupBy {
		groups := map[string]*searchGroupValue{}
		lastOf := map[string]store.SearchHit{}
		for _, h := range hits {
			v := h.RoomID
			if key == groupSender {
				v = h.Sender
			}
			g := groups[v]
			if g == nil {
				g = &searchGroupValue{Order: len(groups) + 1, Results: []string{}}
				groups[v] = g
			}
			g.Results = append(g.Results, h.EventID)
			lastOf[v] = h
		}
		for v, g := range groups {
			q := p.query
			if key == groupRoom {
				i := slices.Index(q.Rooms, v)
				q.Rooms, q.Upto = []string{v}, []int64{q.Upto[i]}
			} else {
				q.Senders = []string{v}
			}
			last := lastOf[v]
			next, err := s.searchScan(ctx, rd, p, q, &store.SearchCursor{Rank: last.Rank, Pos: last.Pos}, 1)
			if err != nil {
				return nil, err
			}
			if len(next) > 0 {
				g.NextBatch = searchToken{Order: p.order, Rank: last.Rank, Pos: last.Pos, GroupKey: key, GroupValue: v}.String()
			}
		}
		out[key] = groups
	}
	return out, nil
}

// searchEventContext is a result's context: visible events around it (a
// user who left sees nothing after their leave) and, when asked, the
// senders' profiles in the state after the last event returned.
func (s *Service) searchEventContext(ctx context.Context, rd store.Reader, dev *httpapi.Device, e store.StoredEvent, nBefore, nAfter int, profiles bool) (*searchContext, error) {
	bound := int64(-1)
	if m, err := rd.Membership(ctx, dev.UserID, e.RoomID); err == nil &&
		(m.Membership == store.MembershipLeave || m.Membership == store.MembershipBan) {
		bound = m.Pos
	}
	beforePage, err := rd.Messages(ctx, e.RoomID, store.Backward, e.Pos-1, -1, bound, nBefore)
	if err != nil {
		return nil, err
	}
	afterPage, err := rd.Messages(ctx, e.RoomID, store.Forward, e.Pos, -1, bound, nAfter)
	if err != nil {
		return nil, err
	}
	sc := &searchContext{Start: clientevent.StreamToken{Pos: e.Pos - 1}.String(), End: clientevent.StreamToken{Pos: e.Pos}.String()}
	if n := len(beforePage.Events); n > 0 {
		sc.Start = clientevent.StreamToken{Pos: beforePage.Events[n-1].Pos - 1}.String()
	}
	if n := len(afterPage.Events); n > 0 {
		sc.End = clientevent.StreamToken{Pos: afterPage.Events[n-1].Pos}.String()
	}
	before, err := s.VisibleEvents(ctx, rd, dev.UserID, e.RoomID, beforePage.Events, clientevent.RoomEventFilter{})
	if err != nil {
		return nil, err
	}
	after, err := s.VisibleEvents(ctx, rd, dev.UserID, e.RoomID, afterPage.Events, clientevent.RoomEventFilter{})
	if err != nil {
		return nil, err
	}
	if sc.EventsBefore, err = s.RenderAll(ctx, rd, dev, before, true); err != nil {
		return nil, err
	}
	if sc.EventsAfter, err = s.RenderAll(ctx, rd, dev, after, true); err != nil {
		return nil, err
	}
	if !profiles {
		return sc, nil
	}
	last := e
	if n := len(after); n > 0 {
		last = after[n-1]
	}
	var filter []*roomserverv1.StateKeyTuple
	seen := map[string]bool{}
	for _, x := range slices.Concat(before, []store.StoredEvent{e}, after) {
		if !seen[x.Sender] {
			seen[x.Sender] = true
			filter = append(filter, &roomserverv1.StateKeyTuple{Type: "m.room.member", StateKey: x.Sender})
		}
	}
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: e.RoomID, EventId: last.EventID, After: true, Filter: filter})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryState", err, nil)
	}
	sc.ProfileInfo = map[string]map[string]any{}
	for _, ev := range st.GetState() {
		pdu, err := pkgce.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if pdu.Type() != "m.room.member" || pdu.StateKey() == nil || !seen[*pdu.StateKey()] {
			continue
		}
		var content struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(pdu.Content(), &content)
		prof := map[string]any{}
		if content.DisplayName != nil {
			prof["displayname"] = *content.DisplayName
		}
		if content.AvatarURL != nil {
			prof["avatar_url"] = *content.AvatarURL
		}
		sc.ProfileInfo[*pdu.StateKey()] = prof
	}
	return sc, nil
}

// searchState is include_state: the state of each room in the results,
// as the user may see it (current, or as of their leave).
func (s *Service) searchState(r *http.Request, dev *httpapi.Device, events []store.StoredEvent) (map[string][]json.RawMessage, error) {
	out := map[string][]json.RawMessage{}
	for _, e := range events {
		if _, ok := out[e.RoomID]; ok {
			continue
		}
		acc, err := s.AccessRoom(r, dev.UserID, e.RoomID)
		if err != nil {
			return nil, err
		}
		if out[e.RoomID], err = s.RoomState(r.Context(), e.RoomID, acc); err != nil {
			return nil, err
		}
	}
	return out, nil
}
