package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

// Queries the client-API makes of appservices through the gRPC API.

// queryRetryWait is the first wait between tries of a user or alias
// query (doubling) within the query timeout.
const queryRetryWait = 100 * time.Millisecond

// query asks r about an entity at path, retrying errors other than a 404
// until the query timeout.
func (s *Service) query(ctx context.Context, r *asreg.Registration, path string) *appservicev1.QueryResponse {
	out := &appservicev1.QueryResponse{AppserviceId: r.ID}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	wait := queryRetryWait
	for {
		err := s.client.do(ctx, r, http.MethodGet, path, nil, nil, nil)
		var se *statusError
		switch {
		case err == nil:
			out.Result = appservicev1.QueryResult_QUERY_RESULT_FOUND
			return out
		case errors.As(err, &se) && se.status == http.StatusNotFound:
			out.Result = appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND
			return out
		}
		out.Error = err.Error()
		select {
		case <-ctx.Done():
			out.Result = appservicev1.QueryResult_QUERY_RESULT_ERROR
			if errors.Is(err, ErrTimeout) {
				out.Result = appservicev1.QueryResult_QUERY_RESULT_TIMEOUT
			}
			return out
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// QueryUser asks the appservice whose namespace holds the user.
func (s *Service) QueryUser(ctx context.Context, userID string) *appservicev1.QueryResponse {
	r := s.regs.UserQueryTarget(userID)
	if r == nil {
		return &appservicev1.QueryResponse{Result: appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND}
	}
	return s.query(ctx, r, "/_matrix/app/v1/users/"+url.PathEscape(userID))
}

// QueryAlias asks the appservice whose namespace holds the alias.
func (s *Service) QueryAlias(ctx context.Context, alias string) *appservicev1.QueryResponse {
	r := s.regs.AliasQueryTarget(alias)
	if r == nil {
		return &appservicev1.QueryResponse{Result: appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND}
	}
	return s.query(ctx, r, "/_matrix/app/v1/rooms/"+url.PathEscape(alias))
}

// protocol asks each appservice declaring the protocol for it, in
// parallel, and merges the answers (nil when none answered).
func (s *Service) protocol(ctx context.Context, protocol string) json.RawMessage {
	regs := s.regs.ByProtocol(protocol)
	answers := make([]map[string]json.RawMessage, len(regs))
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, r := range regs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var p map[string]json.RawMessage
			if err := s.client.do(ctx, r, http.MethodGet, "/_matrix/app/v1/thirdparty/protocol/"+url.PathEscape(protocol), nil, nil, &p); err != nil {
				s.log.Info("third-party protocol query failed", zap.String("appservice", r.ID), zap.String("protocol", protocol), zap.Error(err))
				return
			}
			answers[i] = p
		}()
	}
	wg.Wait()
	var merged map[string]json.RawMessage
	var instances []json.RawMessage
	for i, p := range answers {
		if p == nil {
			continue
		}
		if merged == nil {
			merged = p
		}
		var list []map[string]any
		_ = json.Unmarshal(p["instances"], &list)
		for _, inst := range list {
			if _, ok := inst["instance_id"]; !ok {
				id, _ := inst["network_id"].(string)
				inst["instance_id"] = regs[i].ID + "|" + id
			}
			raw, _ := json.Marshal(inst)
			instances = append(instances, raw)
		}
	}
	if merged == nil {
		return nil
	}
	if instances == nil {
		instances = []json.RawMessage{}
	}
	merged["instances"], _ = json.Marshal(instances)
	out, _ := json.Marshal(merged)
	return out
}

// protocols is every declared protocol that answered.
func (s *Service) protocols(ctx context.Context) map[string][]byte {
	names := map[string]bool{}
	for _, r := range s.regs.List() {
		for _, p := range r.Protocols {
			names[p] = true
		}
	}
	out := map[string][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p := s.protocol(ctx, name); p != nil {
				mu.Lock()
				out[name] = p
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// lookup proxies a third-party location or user lookup (kind "location"
// or "user") to the appservices concerned and concatenates their arrays.
func (s *Service) lookup(ctx context.Context, kind, protocol, rawQuery string) *appservicev1.ThirdPartyLookupResponse {
	var regs []*asreg.Registration
	if protocol != "" {
		regs = s.regs.ByProtocol(protocol)
	} else {
		for _, r := range s.regs.List() {
			if len(r.Protocols) > 0 {
				regs = append(regs, r)
			}
		}
	}
	out := &appservicev1.ThirdPartyLookupResponse{Result: appservicev1.QueryResult_QUERY_RESULT_NOT_FOUND, Results: []byte("[]")}
	if len(regs) == 0 {
		return out
	}
	query, _ := url.ParseQuery(rawQuery)
	path := "/_matrix/app/v1/thirdparty/" + kind
	if protocol != "" {
		path += "/" + url.PathEscape(protocol)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	answers := make([][]json.RawMessage, len(regs))
	ok := make([]bool, len(regs))
	var wg sync.WaitGroup
	for i, r := range regs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var list []json.RawMessage
			if err := s.client.do(ctx, r, http.MethodGet, path, query, nil, &list); err != nil {
				s.log.Info("third-party lookup failed", zap.String("appservice", r.ID), zap.String("path", path), zap.Error(err))
				return
			}
			answers[i], ok[i] = list, true
		}()
	}
	wg.Wait()
	all := []json.RawMessage{}
	answered := false
	for i := range regs {
		if ok[i] {
			answered = true
			all = append(all, answers[i]...)
		}
	}
	out.Result = appservicev1.QueryResult_QUERY_RESULT_FOUND
	if !answered {
		out.Result = appservicev1.QueryResult_QUERY_RESULT_ERROR
	}
	out.Results, _ = json.Marshal(all)
	return out
}

// ping calls POST /_matrix/app/v1/ping and maps the outcome to the
// spec's errors of POST /_matrix/client/v1/appservice/{appserviceId}/ping.
func (s *Service) ping(ctx context.Context, r *asreg.Registration, txnID string) *appservicev1.PingResponse {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	body := map[string]string{}
	if txnID != "" {
		body["transaction_id"] = txnID
	}
	start := time.Now()
	err := s.client.do(ctx, r, http.MethodPost, "/_matrix/app/v1/ping", nil, body, nil)
	out := &appservicev1.PingResponse{}
	var se *statusError
	switch {
	case err == nil:
		out.DurationMs = time.Since(start).Milliseconds()
		return out
	case errors.Is(err, ErrNoURL):
		out.Errcode = "M_URL_NOT_SET"
	case errors.As(err, &se):
		out.Errcode, out.Status, out.Body = "M_BAD_STATUS", int32(se.status), truncate(se.body, 4096)
	case errors.Is(err, ErrBadBody):
		out.Errcode, out.Status = "M_BAD_STATUS", http.StatusOK
	case errors.Is(err, ErrTimeout):
		out.Errcode = "M_CONNECTION_TIMEOUT"
	default:
		out.Errcode = "M_CONNECTION_FAILED"
	}
	out.Error = strings.TrimSpace(err.Error())
	return out
}
