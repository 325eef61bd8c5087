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
	"strings"
	"sync"
	"time"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/services/appservice/store"
)

// asClient makes the homeserver's requests to appservices: every request
// carries Authorization: Bearer hs_token (spec v1.4 on). An appservice
// that answers a /_matrix/app/v1 route as unknown (404 or 405 with
// M_UNRECOGNIZED or no Matrix error, or 501) is asked again on the route
// of the API's earlier drafts (the spec's "Legacy routes"), with the
// hs_token also in the legacy access_token query parameter; once a legacy
// route worked, that appservice is asked there first for legacyRetry,
// then the versioned routes are tried again.
type asClient struct {
	http *http.Client

	mu     sync.Mutex
	legacy map[string]time.Time // appservice ID -> legacy routes first until
}

// legacyRetry is how long an appservice that answered on a legacy route
// is asked there first.
const legacyRetry = 10 * time.Minute

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
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	}
	legacy := legacyPath(path)
	if legacy != "" && c.legacyFirst(r.ID) {
		err := c.send(ctx, r, method, legacy, legacyQuery(query, r), raw, out)
		if !routeUnknown(err) {
			return err
		}
		c.setLegacy(r.ID, false)
	}
	err := c.send(ctx, r, method, path, query, raw, out)
	if legacy == "" || !routeUnknown(err) {
		return err
	}
	lerr := c.send(ctx, r, method, legacy, legacyQuery(query, r), raw, out)
	if routeUnknown(lerr) {
		return err // the versioned route's answer
	}
	if lerr == nil {
		c.setLegacy(r.ID, true)
	}
	return lerr
}

// send makes one request and decodes a 200 answer's JSON into out.
func (c *asClient) send(ctx context.Context, r *asreg.Registration, method, path string, query url.Values, raw []byte, out any) error {
	var rd io.Reader
	if raw != nil {
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
	if raw != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return classify(ctx, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return classify(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{status: resp.StatusCode, body: answer}
	}
	if out == nil {
		out = new(map[string]json.RawMessage)
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("%w: %v", ErrBadBody, err)
	}
	return nil
}

// legacyPath is the legacy route of a /_matrix/app/v1 path ("" for the
// routes that never had one: ping).
func legacyPath(path string) string {
	rest, ok := strings.CutPrefix(path, "/_matrix/app/v1")
	switch {
	case !ok:
		return ""
	case strings.HasPrefix(rest, "/transactions/"), strings.HasPrefix(rest, "/users/"), strings.HasPrefix(rest, "/rooms/"):
		return rest
	case strings.HasPrefix(rest, "/thirdparty/"):
		return "/_matrix/app/unstable" + rest
	}
	return ""
}

// legacyQuery adds the legacy access_token parameter (the hs_token).
func legacyQuery(query url.Values, r *asreg.Registration) url.Values {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("access_token", r.HSToken)
	return q
}

// routeUnknown reports whether err is an answer saying the route does not
// exist: 501, or 404/405 with M_UNRECOGNIZED or without a Matrix error
// (a 404 M_NOT_FOUND is a query's "no such user").
func routeUnknown(err error) bool {
	var se *statusError
	if !errors.As(err, &se) {
		return false
	}
	switch se.status {
	case http.StatusNotImplemented:
		return true
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		var e struct {
			Errcode string `json:"errcode"`
		}
		_ = json.Unmarshal(se.body, &e)
		return e.Errcode == "" || e.Errcode == "M_UNRECOGNIZED"
	}
	return false
}

func (c *asClient) legacyFirst(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Before(c.legacy[id])
}

func (c *asClient) setLegacy(id string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.legacy == nil {
		c.legacy = map[string]time.Time{}
	}
	if on {
		c.legacy[id] = time.Now().Add(legacyRetry)
	} else {
		delete(c.legacy, id)
	}
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
	// MSC2409ToDevice are the to-device messages for the appservice's
	// users' devices (MSC2409; the spec has no stable field yet).
	MSC2409ToDevice []json.RawMessage `json:"de.sorunome.msc2409.to_device,omitempty"`
}

// putTransaction pushes one transaction.
func (c *asClient) putTransaction(ctx context.Context, r *asreg.Registration, txn *store.Txn) error {
	body := transaction{Events: raws(txn.Events), MSC2409ToDevice: raws(txn.ToDevice)}
	if body.Events == nil {
		body.Events = []json.RawMessage{}
	}
	if r.ReceiveEphemeral || !r.MSC2409PushEphemeral {
		body.Ephemeral = raws(txn.Ephemeral)
	} else {
		body.MSC2409Ephemeral = raws(txn.Ephemeral)
	}
	return c.do(ctx, r, http.MethodPut, "/_matrix/app/v1/transactions/"+url.PathEscape(txn.ID), nil, body, nil)
}

func raws(items [][]byte) []json.RawMessage {
	var out []json.RawMessage
	for _, b := range items {
		out = append(out, b)
	}
	return out
}
