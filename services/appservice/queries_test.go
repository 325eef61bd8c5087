package appservice_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// The gRPC API the client-API calls: user and alias queries (found, not
// found, error, timeout), third-party lookups and pings, each with the
// hs_token.
func TestQueriesAndPing(t *testing.T) {
	e := newEnv(t, false,
		asSpec{id: "irc", namespaces: users(`@_irc_.*:as\.test`, true) + "\n  aliases:\n    - exclusive: true\n      regex: '#_irc_.*:as\\.test'"},
		asSpec{id: "nourl", namespaces: users(`@_nourl_.*:as\.test`, true), noURL: true},
	)
	ctx := context.Background()
	c := e.client()
	r := e.recv["irc"]
	set := func(code int) {
		r.mu.Lock()
		r.queryCode = code
		r.mu.Unlock()
	}
	cases := []struct {
		name   string
		code   int // 0: slower than the query timeout
		user   string
		alias  string
		result appservicev1.QueryResult
		asID   string
	}{
		{"user found", http.StatusOK, "@_irc_bob:as.test", "", appservicev1.QueryResult_QUERY_RESULT_FOUND, "irc"},
		{"alias found", http.StatusOK, "", "#_irc_chan:as.test", appservicev1.QueryResult_QUERY_RESULT_FOUND, "irc"},
		{"user not found", http.StatusNotFound, "@_irc_bob:as.test", "", appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND, "irc"},
		{"user error", http.StatusInternalServerError, "@_irc_bob:as.test", "", appservicev1.QueryResult_QUERY_RESULT_ERROR, "irc"},
		{"alias timeout", 0, "", "#_irc_chan:as.test", appservicev1.QueryResult_QUERY_RESULT_TIMEOUT, "irc"},
		{"no namespace", http.StatusOK, "@alice:as.test", "", appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND, ""},
		{"namespace without url", http.StatusOK, "@_nourl_x:as.test", "", appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set(tc.code)
			var resp *appservicev1.QueryResponse
			var err error
			if tc.user != "" {
				resp, err = c.QueryUser(ctx, &appservicev1.QueryUserRequest{UserId: tc.user})
			} else {
				resp, err = c.QueryAlias(ctx, &appservicev1.QueryAliasRequest{Alias: tc.alias})
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetResult() != tc.result || resp.GetAppserviceId() != tc.asID {
				t.Fatalf("got %v", resp)
			}
		})
	}
	set(http.StatusOK)
	r.mu.Lock()
	queries := strings.Join(r.queries, "\n")
	r.mu.Unlock()
	for _, want := range []string{"/_matrix/app/v1/users/@_irc_bob:as.test", "/_matrix/app/v1/rooms/#_irc_chan:as.test"} {
		if !strings.Contains(queries, want) {
			t.Errorf("the appservice was not asked %s:\n%s", want, queries)
		}
	}
	if _, err := c.QueryUser(ctx, &appservicev1.QueryUserRequest{UserId: "bob"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad user ID: %v", err)
	}

	// Third-party: protocols merged with instance IDs, lookups passed on.
	protos, err := c.ThirdPartyProtocols(ctx, &appservicev1.ThirdPartyProtocolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Instances []map[string]any `json:"instances"`
	}
	if err := json.Unmarshal(protos.GetProtocols()["irc"], &p); err != nil || len(p.Instances) != 1 || p.Instances[0]["instance_id"] != "irc|net1" {
		t.Fatalf("protocols: %s (%v)", protos.GetProtocols()["irc"], err)
	}
	one, err := c.ThirdPartyProtocol(ctx, &appservicev1.ThirdPartyProtocolRequest{Protocol: "xmpp"})
	if err != nil || one.GetResult() != appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND {
		t.Fatalf("unknown protocol: %v %v", one, err)
	}
	loc, err := c.ThirdPartyLocations(ctx, &appservicev1.ThirdPartyLookupRequest{Protocol: "irc", Query: "q=matrix"})
	if err != nil || loc.GetResult() != appservicev1.QueryResult_QUERY_RESULT_FOUND || !strings.Contains(string(loc.GetResults()), `"q":"matrix"`) {
		t.Fatalf("location lookup: %v %v", loc, err)
	}

	// Ping: success with a duration, then the spec's errors.
	ping, err := c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "irc", TransactionId: "meow"})
	if err != nil || ping.GetErrcode() != "" {
		t.Fatalf("ping: %v %v", ping, err)
	}
	r.mu.Lock()
	pinged := strings.Join(r.queries, "\n")
	r.mu.Unlock()
	if !strings.Contains(pinged, `ping {"transaction_id":"meow"}`) {
		t.Errorf("ping body: %s", pinged)
	}
	set(http.StatusForbidden)
	if ping, _ := c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "irc"}); ping.GetErrcode() != "M_BAD_STATUS" || ping.GetStatus() != 403 {
		t.Errorf("ping refused: %v", ping)
	}
	if ping, _ := c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "nourl"}); ping.GetErrcode() != "M_URL_NOT_SET" {
		t.Errorf("ping without url: %v", ping)
	}
	r.srv.Close()
	if ping, _ := c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "irc"}); ping.GetErrcode() != "M_CONNECTION_FAILED" {
		t.Errorf("ping of a closed appservice: %v", ping)
	}
	if _, err := c.Ping(ctx, &appservicev1.PingRequest{AppserviceId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("ping of an unknown appservice: %v", err)
	}
}
