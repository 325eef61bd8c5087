package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// AppserviceTarget is what the appservice scenario needs from the caller
// (cmd/myelin-bench sets it up): the load generator's appservice receiver
// listens on Listener, and the target was started with a registration
// whose url points at it, whose hs_token is HSToken and whose users
// namespace is AppserviceUsersRegex (non-exclusive).
type AppserviceTarget struct {
	ID       string       `json:"id"`
	Listener net.Listener `json:"-"`
	HSToken  string       `json:"-"`
	// AdminURL and AdminToken, when set, reach Myelin's appservice
	// listing (GET /_myelin/admin/appservices): the backlog phase waits
	// there until the whole backlog is queued before the receiver
	// recovers. Without them it recovers when the last send is answered.
	AdminURL   string `json:"admin_url,omitempty"`
	AdminToken string `json:"-"`
}

// AppserviceUsersRegex is the users namespace the target's registration
// must hold: the appservice scenario's users (userName with role asuser).
// Their rooms are the appservice's through their membership.
const AppserviceUsersRegex = `@lg[0-9a-z]+-asuser[0-9]+:.*`

// NewAppserviceTarget listens on a loopback port for the appservice
// scenario's receiver and writes the registration the target must load
// (the spec's YAML: url, fresh tokens, AppserviceUsersRegex as a
// non-exclusive users namespace, not rate limited) into dir. The caller
// sets AdminURL (and gives the target AdminToken) when it can, and closes
// the listener after the run.
func NewAppserviceTarget(dir string) (*AppserviceTarget, string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	t := &AppserviceTarget{ID: "loadgen", Listener: lis, HSToken: randomToken(), AdminToken: randomToken()}
	reg := fmt.Sprintf(`id: %s
url: http://%s
as_token: %s
hs_token: %s
sender_localpart: loadgenbridge
rate_limited: false
namespaces:
  users:
    - exclusive: false
      regex: '%s'
`, t.ID, lis.Addr(), randomToken(), t.HSToken, AppserviceUsersRegex)
	path := filepath.Join(dir, "appservice-loadgen.yaml")
	if err := os.WriteFile(path, []byte(reg), 0o600); err != nil {
		lis.Close()
		return nil, "", err
	}
	return t, path, nil
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// asReceiver is the load generator's appservice: it answers PUT
// /_matrix/app/v1/transactions/{txnId} (checking the hs_token), records
// when each event first arrived, and can be switched to fail (503) to
// build a backlog. It answers user and alias queries with 404 and pings
// with {}.
type asReceiver struct {
	hsToken string
	srv     *http.Server

	mu       sync.Mutex
	failing  bool
	arrived  map[string]time.Time // event ID -> first arrival
	txns     map[string][]byte    // txn ID -> body acknowledged
	okTxns   []txnArrival
	problems map[string]int // BAD_TOKEN, TXN_REUSED, BAD_BODY, DUPLICATE_EVENT
	wake     chan struct{}  // closed and replaced at each acknowledged transaction
}

type txnArrival struct {
	at     time.Time
	events int
}

func startReceiver(t AppserviceTarget) *asReceiver {
	r := &asReceiver{hsToken: t.HSToken, arrived: map[string]time.Time{}, txns: map[string][]byte{},
		problems: map[string]int{}, wake: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_matrix/app/v1/transactions/{txnId}", r.serveTxn)
	mux.HandleFunc("GET /_matrix/app/v1/users/{userId}", r.authed(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_NOT_FOUND"})
	}))
	mux.HandleFunc("GET /_matrix/app/v1/rooms/{alias}", r.authed(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"errcode": "M_NOT_FOUND"})
	}))
	mux.HandleFunc("POST /_matrix/app/v1/ping", r.authed(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{})
	}))
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(t.Listener) }()
	return r
}

func (r *asReceiver) close() { _ = r.srv.Close() }

// authed refuses requests without the registration's hs_token (the spec:
// 403 M_FORBIDDEN for a wrong one).
func (r *asReceiver) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		given, _ := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(given), []byte(r.hsToken)) != 1 {
			r.problem("BAD_TOKEN")
			writeJSON(w, http.StatusForbidden, map[string]string{"errcode": "M_FORBIDDEN"})
			return
		}
		h(w, req)
	}
}

func (r *asReceiver) problem(code string) {
	r.mu.Lock()
	r.problems[code]++
	r.mu.Unlock()
}

func (r *asReceiver) serveTxn(w http.ResponseWriter, req *http.Request) {
	r.authed(func(w http.ResponseWriter, req *http.Request) {
		now := time.Now()
		raw, err := io.ReadAll(req.Body)
		var body struct {
			Events []struct {
				EventID string `json:"event_id"`
			} `json:"events"`
		}
		if err != nil || json.Unmarshal(raw, &body) != nil {
			r.problem("BAD_BODY")
			writeJSON(w, http.StatusBadRequest, map[string]string{"errcode": "M_NOT_JSON"})
			return
		}
		txnID := req.PathValue("txnId")
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.failing {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"errcode": "M_UNKNOWN", "error": "load generator: backlog phase"})
			return
		}
		if prev, ok := r.txns[txnID]; ok {
			// A retry of an acknowledged transaction (the answer was
			// lost): the same content is fine, other content is a bug.
			if !bytes.Equal(prev, raw) {
				r.problems["TXN_REUSED"]++
			}
			writeJSON(w, http.StatusOK, map[string]any{})
			return
		}
		r.txns[txnID] = raw
		for _, ev := range body.Events {
			if _, dup := r.arrived[ev.EventID]; dup {
				r.problems["DUPLICATE_EVENT"]++
				continue
			}
			r.arrived[ev.EventID] = now
		}
		r.okTxns = append(r.okTxns, txnArrival{at: now, events: len(body.Events)})
		close(r.wake)
		r.wake = make(chan struct{})
		writeJSON(w, http.StatusOK, map[string]any{})
	})(w, req)
}

func (r *asReceiver) setFailing(f bool) {
	r.mu.Lock()
	r.failing = f
	r.mu.Unlock()
}

// arrival returns when id first arrived.
func (r *asReceiver) arrival(id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.arrived[id]
	return at, ok
}

// waitAll waits until every one of ids has arrived or until ctx ends; it
// returns how many arrived.
func (r *asReceiver) waitAll(ctx context.Context, ids []string) int {
	for {
		r.mu.Lock()
		n := 0
		for _, id := range ids {
			if _, ok := r.arrived[id]; ok {
				n++
			}
		}
		wake := r.wake
		r.mu.Unlock()
		if n == len(ids) {
			return n
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return n
		}
	}
}

// txnsSince returns the acknowledged transactions from index i on.
func (r *asReceiver) txnsSince(i int) []txnArrival {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]txnArrival(nil), r.okTxns[min(i, len(r.okTxns)):]...)
}

func (r *asReceiver) txnCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.okTxns)
}

// problemCounts returns the protocol problems seen so far.
func (r *asReceiver) problemCounts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.problems {
		out[k] = v
	}
	return out
}
