package fedreceiver

// PUT /_matrix/federation/v1/send/{txnId}: a transaction of PDUs and
// EDUs. Idempotent per (origin, txnId) across every replica: the first
// request claims the transaction in the receiver's own table (an INSERT
// that conflicts for every other request), processes it and stores the
// answer; any other request for it, concurrent or later, waits for and
// returns that stored answer without processing anything.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// Transaction limits (the spec's).
const (
	maxPDUs = 50
	maxEDUs = 100
)

// errRetryTransaction fails a whole transaction so that the sender sends
// it again: something it carries could not be handed on (a peer service
// or JetStream is unavailable) and would otherwise be lost.
var errRetryTransaction = errors.New("the transaction could not be processed; send it again")

// transactionBody is the request body; PDUs stay raw until their room's
// version is known.
type transactionBody struct {
	Origin         string                  `json:"origin"`
	OriginServerTS *int64                  `json:"origin_server_ts"`
	PDUs           *[]json.RawMessage      `json:"pdus"`
	EDUs           []gomatrixserverlib.EDU `json:"edus"`
}

func (s *Service) serveSend(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	origin := federation.Origin(ctx)
	txnID, err := pathParam(r, "txnId")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var body transactionBody
	if _, err := decodeBodyChecked(r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	switch {
	case body.PDUs == nil:
		s.writeError(w, r, matrixhttp.BadJSON("pdus is required"))
		return
	case body.OriginServerTS == nil:
		s.writeError(w, r, matrixhttp.BadJSON("origin_server_ts is required"))
		return
	case len(*body.PDUs) > maxPDUs || len(body.EDUs) > maxEDUs:
		s.writeError(w, r, matrixhttp.BadJSON("A transaction holds at most 50 PDUs and 100 EDUs"))
		return
	case body.Origin != string(origin):
		s.writeError(w, r, matrixhttp.BadJSON("The transaction's origin is not the server that signed the request"))
		return
	}
	resp, err := s.transaction(ctx, origin, txnID, func(ctx context.Context) (any, error) {
		return s.processTransaction(ctx, origin, *body.PDUs, body.EDUs)
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(resp)
}

// transactionPoll is how often a request waiting for another one's
// answer to the same transaction looks again.
const transactionPoll = 100 * time.Millisecond

// transaction runs process once per (origin, txnID) across replicas and
// returns the stored answer (process's, or the first request's).
func (s *Service) transaction(ctx context.Context, origin spec.ServerName, txnID string, process func(context.Context) (any, error)) ([]byte, error) {
	deadline := time.Now().Add(s.cfg.TransactionWait)
	for {
		claim, err := s.store.ClaimTransaction(ctx, string(origin), txnID, s.instance, s.cfg.TransactionStale)
		if err != nil {
			return nil, err
		}
		if claim.Response != nil {
			return claim.Response, nil
		}
		if claim.Claimed {
			break
		}
		if time.Now().After(deadline) {
			return nil, matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "The transaction is still being processed; send it again later")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(transactionPoll):
		}
	}
	// Processing goes on if the sender hangs up: its answer is stored for
	// the retry.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.TransactionBudget)
	defer cancel()
	result, err := process(pctx)
	var raw []byte
	if err == nil {
		raw, err = json.Marshal(result)
	}
	if err != nil {
		if rerr := s.store.ReleaseTransaction(context.WithoutCancel(ctx), string(origin), txnID, s.instance); rerr != nil {
			s.log.Warn("release transaction", zap.Error(rerr))
		}
		return nil, err
	}
	finished, err := s.store.FinishTransaction(context.WithoutCancel(ctx), string(origin), txnID, s.instance, raw)
	if err != nil {
		return nil, err
	}
	if !finished {
		// Taken over as stale meanwhile: the other claimer's answer is
		// the one replays get; ours reports the same PDUs (inputs are
		// idempotent).
		s.log.Warn("transaction claim was taken over", zap.String("origin", string(origin)), zap.String("txn_id", txnID))
	}
	return raw, nil
}

// processTransaction handles the PDUs (through the room-server, a room's
// at once, with gap filling) and the EDUs, and returns the per-PDU results.
func (s *Service) processTransaction(ctx context.Context, origin spec.ServerName, pdus []json.RawMessage, edus []gomatrixserverlib.EDU) (fclient.RespSend, error) {
	tc := &txnContext{origin: origin, acl: s.newACLCache(origin), rooms: map[string]*roomInfo{}}
	resp := fclient.RespSend{PDUs: map[string]fclient.PDUResult{}}
	prepared := make([]preparedPDU, 0, len(pdus))
	for _, raw := range pdus {
		if ctx.Err() != nil {
			break // out of budget: the rest is left without a result
		}
		p, err := s.preparePDU(ctx, tc, raw)
		if err != nil {
			return resp, err
		}
		prepared = append(prepared, p)
	}
	if err := s.inputPrepared(ctx, origin, prepared); err != nil {
		return resp, err
	}
	for _, p := range prepared {
		if p.id != "" {
			resp.PDUs[p.id] = p.res
		}
	}
	for _, edu := range edus {
		if err := s.processEDU(ctx, tc, edu); err != nil {
			return resp, err
		}
	}
	return resp, nil
}
