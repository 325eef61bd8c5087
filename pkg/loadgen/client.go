package loadgen

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Client is one Matrix user speaking the client-server API over plain
// net/http. Plain HTTP (rather than a client library) keeps the timing
// honest: a latency is exactly one request's round trip, body read included.
type Client struct {
	base   string
	hc     *http.Client
	UserID string
	Token  string
	txn    atomic.Int64
}

// newHTTPClient is shared by every Client of a run: keep-alive connections
// to loopback, enough idle connections for every concurrent sender.
func newHTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext:         loopbackOnly(&net.Dialer{Timeout: 5 * time.Second}),
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
	}
	// No request may hang a scenario: the longest legitimate one is a
	// 10 s /sync long-poll or a big account's initial /sync.
	return &http.Client{Transport: tr, Timeout: requestTimeout}
}

// loopbackOnly dials only loopback addresses. Checking at the dial, not
// only the base URL, holds for every connection of the run: the pprof URL,
// a redirect to another host, a name that resolves elsewhere later.
func loopbackOnly(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		for _, ip := range ips {
			if !ip.IP.IsLoopback() {
				return nil, fmt.Errorf("%s resolves to %s, not a loopback address: the load generator only drives servers on this machine", host, ip.IP)
			}
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("%s resolves to no address", host)
		}
		return d.DialContext(ctx, network, net.JoinHostPort(ips[0].IP.String(), port))
	}
}

// MatrixError is a non-2xx answer; Errcode is the spec's errcode, or a
// pseudo code (HTTP_<status>, TRANSPORT) when the body carries none.
type MatrixError struct {
	Status  int
	Errcode string
	Message string
	Body    []byte
	// RetryAfter is how long a rate-limited answer (429 M_LIMIT_EXCEEDED)
	// asks the client to wait: retry_after_ms, else the Retry-After header.
	RetryAfter time.Duration
}

func (e *MatrixError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Errcode, e.Message)
}

// Errcode classifies err for the error counts of a phase.
func Errcode(err error) string {
	if err == nil {
		return ""
	}
	var me *MatrixError
	if errors.As(err, &me) {
		return me.Errcode
	}
	if errorsIsContext(err) {
		return "CANCELLED"
	}
	return "TRANSPORT"
}

// do sends one request and decodes a JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode/100 != 2 {
		me := &MatrixError{Status: res.StatusCode, Errcode: fmt.Sprintf("HTTP_%d", res.StatusCode), Body: raw}
		var e struct {
			Errcode      string `json:"errcode"`
			Error        string `json:"error"`
			RetryAfterMS int64  `json:"retry_after_ms"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Errcode != "" {
			me.Errcode, me.Message = e.Errcode, e.Error
		}
		if res.StatusCode == http.StatusTooManyRequests {
			me.RetryAfter = time.Duration(e.RetryAfterMS) * time.Millisecond
			if secs, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && me.RetryAfter == 0 {
				me.RetryAfter = time.Duration(secs) * time.Second
			}
		}
		return me
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func asMatrix(err error, target **MatrixError) bool { return errors.As(err, target) }

func errorsIsContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

const clientPrefix = "/_matrix/client/v3"

// requestTimeout bounds every request, so every scenario ends by itself
// even against a server that stops answering.
const requestTimeout = 2 * time.Minute

// Registration says how users are created on the target.
type Registration struct {
	// SharedSecret, when set, registers through Synapse's admin API
	// (/_synapse/admin/v1/register, nonce + HMAC-SHA1). Otherwise users are
	// registered openly with user-interactive auth m.login.dummy.
	SharedSecret string
	// AppserviceToken, when set, is the as_token of an appservice whose
	// user namespace covers the load generator's users (@lg...); the
	// scenarios that create many users (roomsize) register theirs through
	// it: m.login.application_service, no password to hash.
	AppserviceToken string
}

// register creates user name with password and logs the client in. retry
// wraps each of its requests (nil: none); a whole registration is two
// requests, so retrying only the whole could starve on a rate limit that
// lets one request through per wait.
func register(ctx context.Context, hc *http.Client, base string, reg Registration, name, password string, retry func(func() error) error) (*Client, error) {
	c := &Client{base: strings.TrimRight(base, "/"), hc: hc}
	if retry == nil {
		retry = func(f func() error) error { return f() }
	}
	do := func(method, path string, body, out any) error {
		return retry(func() error { return c.do(ctx, method, path, nil, body, out) })
	}
	var out struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
	}
	switch {
	case reg.AppserviceToken != "":
		c.Token = reg.AppserviceToken
		body := map[string]any{"type": "m.login.application_service", "username": name, "inhibit_login": false}
		if err := do(http.MethodPost, clientPrefix+"/register", body, &out); err != nil {
			return nil, fmt.Errorf("register %s through the appservice: %w", name, err)
		}
	case reg.SharedSecret != "":
		if err := registerSharedSecret(do, reg.SharedSecret, name, password, &out); err != nil {
			return nil, err
		}
	default:
		body := map[string]any{"username": name, "password": password, "inhibit_login": false}
		err := do(http.MethodPost, clientPrefix+"/register", body, &out)
		var me *MatrixError
		if asMatrix(err, &me) && me.Status == http.StatusUnauthorized {
			// The UIA challenge: answer it with m.login.dummy in its session,
			// if the server offers a flow of only that stage.
			var uia struct {
				Session string `json:"session"`
				Flows   []struct {
					Stages []string `json:"stages"`
				} `json:"flows"`
			}
			_ = json.Unmarshal(me.Body, &uia)
			var offered []string
			dummy := false
			for _, f := range uia.Flows {
				offered = append(offered, strings.Join(f.Stages, "+"))
				if len(f.Stages) > 0 && !slices.ContainsFunc(f.Stages, func(s string) bool { return s != "m.login.dummy" }) {
					dummy = true
				}
			}
			if !dummy {
				return nil, fmt.Errorf("register %s: the server offers no open registration with m.login.dummy (its flows: %s); "+
					"use shared-secret registration ($LOADGEN_SHARED_SECRET, -registration shared-secret) or open the server's registration", name, strings.Join(offered, ", "))
			}
			body["auth"] = map[string]any{"type": "m.login.dummy", "session": uia.Session}
			err = do(http.MethodPost, clientPrefix+"/register", body, &out)
		}
		if asMatrix(err, &me) && me.Status == http.StatusForbidden {
			return nil, fmt.Errorf("register %s: the server refuses open registration (%w); "+
				"use shared-secret registration ($LOADGEN_SHARED_SECRET, -registration shared-secret) or open the server's registration", name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
	}
	c.UserID, c.Token = out.UserID, out.AccessToken
	if c.Token == "" {
		return nil, fmt.Errorf("register %s: no access token in the answer", name)
	}
	return c, nil
}

// registerSharedSecret implements the client side of Synapse's shared-secret
// registration: GET a nonce, then POST the user with
// HMAC-SHA1(secret, nonce \0 user \0 password \0 "notadmin").
func registerSharedSecret(do func(method, path string, body, out any) error, secret, name, password string, out any) error {
	const path = "/_synapse/admin/v1/register"
	var n struct {
		Nonce string `json:"nonce"`
	}
	if err := do(http.MethodGet, path, nil, &n); err != nil {
		return fmt.Errorf("shared-secret registration nonce: %w", err)
	}
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(n.Nonce + "\x00" + name + "\x00" + password + "\x00notadmin"))
	body := map[string]any{
		"nonce": n.Nonce, "username": name, "password": password, "admin": false,
		"mac": hex.EncodeToString(mac.Sum(nil)),
	}
	if err := do(http.MethodPost, path, body, out); err != nil {
		return fmt.Errorf("shared-secret registration of %s: %w", name, err)
	}
	return nil
}

// SupportsSharedSecret reports whether the target answers the shared-secret
// registration nonce endpoint.
func SupportsSharedSecret(ctx context.Context, base string) bool {
	c := &Client{base: strings.TrimRight(base, "/"), hc: newHTTPClient()}
	var n struct {
		Nonce string `json:"nonce"`
	}
	return c.do(ctx, http.MethodGet, "/_synapse/admin/v1/register", nil, nil, &n) == nil && n.Nonce != ""
}

// CreateRoom creates a public room (anyone may join) and returns its ID.
func (c *Client) CreateRoom(ctx context.Context, name string) (string, error) {
	var out struct {
		RoomID string `json:"room_id"`
	}
	body := map[string]any{"preset": "public_chat", "name": name}
	err := c.do(ctx, http.MethodPost, clientPrefix+"/createRoom", nil, body, &out)
	return out.RoomID, err
}

// Join joins a room by ID.
func (c *Client) Join(ctx context.Context, roomID string) error {
	return c.do(ctx, http.MethodPost, clientPrefix+"/join/"+url.PathEscape(roomID), nil, map[string]any{}, nil)
}

// Send sends an m.room.message with a fresh transaction ID and returns the
// event ID.
func (c *Client) Send(ctx context.Context, roomID, body string) (string, error) {
	txn := fmt.Sprintf("lg%d-%d", time.Now().UnixNano(), c.txn.Add(1))
	var out struct {
		EventID string `json:"event_id"`
	}
	path := clientPrefix + "/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txn)
	err := c.do(ctx, http.MethodPut, path, nil, map[string]any{"msgtype": "m.text", "body": body}, &out)
	return out.EventID, err
}

// SyncResponse is the part of a /sync answer the scenarios read.
type SyncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			State struct {
				Events []syncEvent `json:"events"`
			} `json:"state"`
			Timeline struct {
				Events  []syncEvent `json:"events"`
				Limited bool        `json:"limited"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
	// Bytes is the size of the answer body.
	Bytes int `json:"-"`
}

type syncEvent struct {
	Type     string  `json:"type"`
	EventID  string  `json:"event_id"`
	StateKey *string `json:"state_key"`
}

// Sync calls /sync with an inline filter (JSON) and returns the answer.
func (c *Client) Sync(ctx context.Context, since, filter string, timeout time.Duration) (*SyncResponse, error) {
	q := url.Values{"timeout": {fmt.Sprint(timeout.Milliseconds())}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, clientPrefix+"/sync", q, nil, &raw); err != nil {
		return nil, err
	}
	var out SyncResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("decode /sync: %w", err)
	}
	out.Bytes = len(raw)
	return &out, nil
}
