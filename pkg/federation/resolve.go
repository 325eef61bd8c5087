package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"golang.org/x/sync/singleflight"
)

// ErrInvalidServerName is returned for a destination that is not a server
// name by the grammar of the appendices.
var ErrInvalidServerName = errors.New("invalid server name")

// Destination is where one federation request for a server name goes.
type Destination struct {
	// Addr is the host:port to connect to (the host resolved at dial time).
	Addr string
	// Host is the HTTP Host header.
	Host string
	// TLSServerName is the name the certificate must be valid for (and the
	// SNI, unless it is an IP address).
	TLSServerName string
}

// Cache times of a resolution (the spec's recommendations): a well-known
// answer for its Cache-Control max-age or Expires (24 h without either, at
// most 48 h, at least a minute); a failed well-known (so SRV or port 8448)
// for 5 minutes, doubling with each further failure up to an hour.
const (
	wellKnownDefaultTTL  = 24 * time.Hour
	wellKnownMaxTTL      = 48 * time.Hour
	wellKnownMinTTL      = time.Minute
	wellKnownErrorTTL    = 5 * time.Minute
	wellKnownMaxErrorTTL = time.Hour
	// wellKnownMaxSize bounds a /.well-known/matrix/server body.
	wellKnownMaxSize = 50 << 10
	// discoveryTimeout bounds one discovery (well-known and SRV lookups).
	discoveryTimeout = 30 * time.Second
	// maxCachedResolutions bounds the cache (server names are free to
	// make up): past it, expired entries go, then arbitrary ones.
	maxCachedResolutions = 10000
)

// resolver turns server names into destinations: the static map first,
// then the spec's discovery steps (IP literal; explicit port;
// /.well-known/matrix/server; SRV _matrix-fed._tcp, then _matrix._tcp;
// port 8448).
//
// The steps are written here rather than taken from gomatrixserverlib's
// fclient.ResolveServer because that one fetches .well-known with its own
// http.Client (outside the SSRF dialer and the configured CAs), asks only
// net.DefaultResolver, and caches nothing by the response's cache headers.
// Server names are parsed by gomatrixserverlib (spec.ParseAndValidateServerName).
type resolver struct {
	static        map[spec.ServerName]string
	dns           Resolver
	wellKnown     *http.Client
	wellKnownPort int
	defaultPort   int
	now           func() time.Time

	mu    sync.Mutex
	cache map[spec.ServerName]*resolution
	group singleflight.Group
}

type resolution struct {
	dests    []Destination
	expires  time.Time
	failures int // consecutive failed well-known lookups
}

// resolve returns the destinations for serverName, in order of preference.
func (r *resolver) resolve(ctx context.Context, serverName spec.ServerName) ([]Destination, error) {
	if addr, ok := r.static[serverName]; ok {
		host, _, _ := spec.ParseAndValidateServerName(serverName)
		return []Destination{{Addr: addr, Host: string(serverName), TLSServerName: unbracket(host)}}, nil
	}
	host, port, ok := spec.ParseAndValidateServerName(serverName)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrInvalidServerName, serverName)
	}
	host = unbracket(host)
	// 1. An IP literal: that address, the given port or 8448.
	if net.ParseIP(host) != nil {
		if port < 0 {
			port = r.defaultPort
		}
		return []Destination{{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Host: string(serverName), TLSServerName: host}}, nil
	}
	// 2. An explicit port: the hostname's addresses and that port.
	if port >= 0 {
		return []Destination{{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Host: string(serverName), TLSServerName: host}}, nil
	}
	now := r.now()
	r.mu.Lock()
	cached := r.cache[serverName]
	r.mu.Unlock()
	if cached != nil && now.Before(cached.expires) {
		return cached.dests, nil
	}
	// One discovery per server name at a time, on a context of its own: a
	// caller that gives up must not leave a half-done lookup in the cache.
	ch := r.group.DoChan(string(serverName), func() (any, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discoveryTimeout)
		defer cancel()
		return r.discover(dctx, serverName, host, cached), nil
	})
	select {
	case res := <-ch:
		return res.Val.(*resolution).dests, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// discover runs steps 3 to 6 for a hostname without a port and caches the
// answer.
func (r *resolver) discover(ctx context.Context, serverName spec.ServerName, host string, prev *resolution) *resolution {
	res := &resolution{}
	delegated, ttl, err := r.fetchWellKnown(ctx, host)
	if err == nil {
		res.dests = r.delegate(ctx, delegated)
		res.expires = r.now().Add(ttl)
	} else {
		// 4.-6. No (valid) well-known: SRV for the hostname, then 8448.
		res.dests = r.srvOrDefault(ctx, host, host)
		if prev != nil {
			res.failures = prev.failures + 1
		} else {
			res.failures = 1
		}
		backoff := wellKnownErrorTTL << min(res.failures-1, 8)
		res.expires = r.now().Add(min(backoff, wellKnownMaxErrorTTL))
	}
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[spec.ServerName]*resolution{}
	}
	if len(r.cache) >= maxCachedResolutions {
		now := r.now()
		for name, old := range r.cache {
			if now.After(old.expires) || len(r.cache) >= maxCachedResolutions {
				delete(r.cache, name)
			}
		}
	}
	r.cache[serverName] = res
	r.mu.Unlock()
	return res
}

// delegate applies step 3's sub-steps to a valid well-known m.server value.
func (r *resolver) delegate(ctx context.Context, delegated spec.ServerName) []Destination {
	dhost, dport, _ := spec.ParseAndValidateServerName(delegated)
	dhost = unbracket(dhost)
	// 3.1 An IP literal, with its port or 8448; Host is the value itself.
	if net.ParseIP(dhost) != nil {
		if dport < 0 {
			dport = r.defaultPort
		}
		return []Destination{{Addr: net.JoinHostPort(dhost, strconv.Itoa(dport)), Host: string(delegated), TLSServerName: dhost}}
	}
	// 3.2 A hostname with a port.
	if dport >= 0 {
		return []Destination{{Addr: net.JoinHostPort(dhost, strconv.Itoa(dport)), Host: string(delegated), TLSServerName: dhost}}
	}
	// 3.3-3.5 SRV records of the delegated hostname, then its port 8448.
	return r.srvOrDefault(ctx, dhost, dhost)
}

// srvOrDefault looks up _matrix-fed._tcp.<name>, then the deprecated
// _matrix._tcp.<name>, and falls back to <name>:8448. The Host header and
// certificate name are hostHeader in every case.
func (r *resolver) srvOrDefault(ctx context.Context, name, hostHeader string) []Destination {
	_, records, err := r.dns.LookupSRV(ctx, "matrix-fed", "tcp", name)
	if err != nil || len(records) == 0 {
		_, records, err = r.dns.LookupSRV(ctx, "matrix", "tcp", name)
	}
	var out []Destination
	if err == nil {
		for _, rec := range records {
			target := strings.TrimSuffix(rec.Target, ".")
			if target == "" {
				continue
			}
			out = append(out, Destination{
				Addr: net.JoinHostPort(target, strconv.Itoa(int(rec.Port))), Host: hostHeader, TLSServerName: hostHeader,
			})
		}
	}
	if len(out) == 0 {
		out = []Destination{{Addr: net.JoinHostPort(name, strconv.Itoa(r.defaultPort)), Host: hostHeader, TLSServerName: hostHeader}}
	}
	return out
}

// fetchWellKnown GETs https://<host>/.well-known/matrix/server (through
// the SSRF-guarded, TLS-verifying client) and returns its m.server value
// and how long to cache it. Any failure (transport, status, size, JSON, a
// missing or invalid m.server) is an error: discovery goes on with SRV.
func (r *resolver) fetchWellKnown(ctx context.Context, host string) (spec.ServerName, time.Duration, error) {
	hostPort := host
	if r.wellKnownPort != 443 {
		hostPort = net.JoinHostPort(host, strconv.Itoa(r.wellKnownPort))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hostPort+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := r.wellKnown.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("well-known: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxSize+1))
	if err != nil {
		return "", 0, err
	}
	if len(body) > wellKnownMaxSize {
		return "", 0, errors.New("well-known: response too large")
	}
	var wk struct {
		Server spec.ServerName `json:"m.server"`
	}
	if err := json.Unmarshal(body, &wk); err != nil {
		return "", 0, fmt.Errorf("well-known: %w", err)
	}
	if _, _, ok := spec.ParseAndValidateServerName(wk.Server); !ok {
		return "", 0, fmt.Errorf("well-known: m.server %q is not a server name", wk.Server)
	}
	return wk.Server, cacheTTL(resp.Header, r.now()), nil
}

// cacheTTL reads Cache-Control max-age (or, without it, Expires), clamped
// to [1 min, 48 h]; 24 h when the response says nothing.
func cacheTTL(h http.Header, now time.Time) time.Duration {
	ttl, found := time.Duration(0), false
	for _, directive := range strings.Split(h.Get("Cache-Control"), ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			ttl, found = 0, true
		case "max-age":
			if secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && !found {
				ttl, found = time.Duration(secs)*time.Second, true
			}
		}
	}
	if !found {
		if exp, err := http.ParseTime(h.Get("Expires")); err == nil {
			ttl, found = exp.Sub(now), true
		}
	}
	if !found {
		return wellKnownDefaultTTL
	}
	return min(max(ttl, wellKnownMinTTL), wellKnownMaxTTL)
}

func unbracket(host string) string {
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		return host[1 : len(host)-1]
	}
	return host
}
