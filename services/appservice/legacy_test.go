package appservice_test

import (
	"context"
	"strings"
	"testing"

	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// Legacy routes (spec: "Homeservers should attempt to use the specified
// endpoints first ... fall back to the older endpoints", and "periodically
// try again for the newer endpoints"): an appservice of the earlier drafts
// gets its transactions and queries on the unversioned routes with the
// hs_token as access_token; updated, it gets them on the versioned ones
// again; a query's 404 M_NOT_FOUND is an answer, not a missing route.
func TestLegacyRoutes(t *testing.T) {
	e := newEnv(t, false, asSpec{id: "old", namespaces: users(`@old_.*:as\.test`, false) +
		"\n  aliases:\n    - exclusive: true\n      regex: '#_old_.*:as\\.test'"})
	r := e.recv["old"]
	r.mu.Lock()
	r.legacyOnly = true
	r.mu.Unlock()
	ctx := context.Background()
	c := e.client()

	alice, bob := e.user("alice"), e.user("old_bob")
	room := e.room(alice, nil)
	join(t, bob, room)
	sent := send(t, alice, room, 2, "before the update")
	waitEvents(t, r, room, sent)
	resp, err := c.QueryAlias(ctx, &appservicev1.QueryAliasRequest{Alias: "#_old_chan:as.test"})
	if err != nil || resp.GetResult() != appservicev1.QueryResult_QUERY_RESULT_FOUND {
		t.Fatalf("alias query of a legacy appservice: %v %v", resp, err)
	}
	r.mu.Lock()
	queries := strings.Join(r.queries, "\n")
	unrecognized := strings.Join(r.unrecognized, "\n")
	r.mu.Unlock()
	if !strings.Contains("\n"+strings.Join(r.txnPaths(), "\n"), "\n/transactions/") {
		t.Errorf("no transaction on the legacy route: %v", r.txnPaths())
	}
	if !strings.Contains(queries, "/rooms/#_old_chan:as.test?access_token=hs-old") {
		t.Errorf("alias query not on the legacy route:\n%s", queries)
	}
	if !strings.Contains(unrecognized, "/_matrix/app/v1/transactions/") {
		t.Errorf("the versioned route was not tried first: %s", unrecognized)
	}

	// The appservice is updated: the versioned routes again.
	r.mu.Lock()
	r.legacyOnly = false
	r.unrecognized = nil
	r.mu.Unlock()
	sent = append(sent, send(t, alice, room, 2, "after the update")...)
	waitEvents(t, r, room, sent)
	if !strings.Contains(strings.Join(r.txnPaths(), "\n"), "/_matrix/app/v1/transactions/") {
		t.Errorf("after the update, transactions still on the legacy route: %v", r.txnPaths())
	}
	r.mu.Lock()
	r.queryCode = 404
	r.queries = nil
	r.mu.Unlock()
	resp, err = c.QueryAlias(ctx, &appservicev1.QueryAliasRequest{Alias: "#_old_none:as.test"})
	if err != nil || resp.GetResult() != appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND {
		t.Fatalf("alias query answered 404 M_NOT_FOUND: %v %v", resp, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queries) != 1 || !strings.HasPrefix(r.queries[0], "/_matrix/app/v1/rooms/") {
		t.Errorf("a not-found answer sent the query elsewhere too: %v", r.queries)
	}
}
