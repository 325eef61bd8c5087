package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
)

// asClient makes the homeserver's requests to appservices: every request
// carries Authorization: Bearer hs_token (spec v1.4 on; the legacy
// access_token query parameter is not sent).
type asClient struct {
	http *http.Client
}

// Sentinel errors of requests to appservices.
var (
	// ErrNoURL: the registration's url is null.
	ErrNoURL = errors.New("the appservice has no url")
	// ErrBadStatus: the appservice answered with a status other than 200.
	ErrBadStatus = errors.New("the appservice answered an error status")
	// ErrBadBody: the appservice's 200 answer is not the JSON asked for.
	ErrBadBody = errors.New("the appservice answered something that is not JSON")
	// ErrConnection: the appservice could not be reached.
	ErrConnection = errors.New("could not connect to the appservice")
	// ErrTimeout: the appservice did not answer in time.
	ErrTimeout = errors.New("the appservice did not answer in time")
)

// statusError is an ErrBadStatus with the answer.
type statusError struct {
	status int
	body   []byte
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%v: %d %s", ErrBadStatus, e.status, truncate(e.body, 200))
}

func (e *statusError) Unwrap() error { return ErrBadStatus }

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// maxAnswer bounds what is read of an appservice's answer.
const maxAnswer = 1 << 20

// do sends one request to the appservice at path (below its url, already
// escaped) and decodes a 200 answer's JSON into out (if not nil).
func (c *asClient) do(ctx context.Context, r *asreg.Registration, method, path string, query url.Values, body any, out any) error {
	if !r.HasURL() {
		return ErrNoURL
	}
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	u := r.BaseURL() + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConnection, err)
	}
	req.Header.Set("Authorization", "Bearer "+r.HSToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return classify(ctx, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return classify(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{status: resp.StatusCode, body: raw}
	}
	if out == nil {
		out = new(map[string]json.RawMessage)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: %v", ErrBadBody, err)
	}
	return nil
}

// classify tells a timeout from a failed connection.
func classify(ctx context.Context, err error) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return fmt.Errorf("%w: %v", ErrConnection, err)
}

// transaction is the body of PUT /_matrix/app/v1/transactions/{txnId}.
type transaction struct {
	Events    []json.RawMessage `json:"events"`
	Ephemeral []json.RawMessage `json:"ephemeral,omitempty"`
	// MSC2409Ephemeral is for registrations that asked with the unstable
	// de.sorunome.msc2409.push_ephemeral key only.
	MSC2409Ephemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral,omitempty"`
}

// putTransaction pushes one transaction.
func (c *asClient) putTransaction(ctx context.Context, r *asreg.Registration, txnID string, events, ephemeral [][]byte) error {
	body := transaction{Events: make([]json.RawMessage, 0, len(events))}
	for _, e := range events {
		body.Events = append(body.Events, e)
	}
	var eph []json.RawMessage
	for _, e := range ephemeral {
		eph = append(eph, e)
	}
	if r.ReceiveEphemeral || !r.MSC2409PushEphemeral {
		body.Ephemeral = eph
	} else {
		body.MSC2409Ephemeral = eph
	}
	return c.do(ctx, r, http.MethodPut, "/_matrix/app/v1/transactions/"+url.PathEscape(txnID), nil, body, nil)
}
