package federation_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// dnsAnswers is the tests' DNS: fixed A/AAAA and SRV answers, NXDOMAIN for
// anything else. It stands in for net.DefaultResolver behind the same code.
type dnsAnswers struct {
	mu    sync.Mutex
	hosts map[string][]string
	srv   map[string][]*net.SRV
	asked []string
}

func (d *dnsAnswers) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, "A "+host)
	var out []net.IPAddr
	for _, ip := range d.hosts[host] {
		out = append(out, net.IPAddr{IP: net.ParseIP(ip)})
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

func (d *dnsAnswers) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	key := "_" + service + "._" + proto + "." + name
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, "SRV "+key)
	if recs := d.srv[key]; len(recs) > 0 {
		return key, recs, nil
	}
	return "", nil, &net.DNSError{Err: "no such host", Name: key, IsNotFound: true}
}

// peer is an HTTPS server on a loopback address. It answers
// /_matrix/federation/v1/version with its name, the Host header and the
// TLS server name (SNI) it saw, and /.well-known/matrix/server with
// whatever wellKnown holds.
type peer struct {
	name      string
	addr      string // ip:port
	srv       *httptest.Server
	wellKnown atomic.Pointer[wellKnownAnswer]
	wkHits    atomic.Int32
}

type wellKnownAnswer struct {
	status int
	body   string
	header http.Header
}

func (p *peer) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/matrix/server":
			p.wkHits.Add(1)
			a := p.wellKnown.Load()
			if a == nil {
				http.NotFound(w, r)
				return
			}
			for k, v := range a.header {
				w.Header()[k] = v
			}
			w.WriteHeader(a.status)
			_, _ = w.Write([]byte(a.body))
		case "/_matrix/federation/v1/version":
			sni := ""
			if r.TLS != nil {
				sni = r.TLS.ServerName
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"server": map[string]string{"name": p.name, "version": r.Host + "|" + sni}})
		default:
			http.NotFound(w, r)
		}
	})
}

// world is a set of peers on loopback addresses sharing one port, which
// the transport uses as both the well-known port (443) and the default
// federation port (8448).
type world struct {
	t     *testing.T
	ca    *testkit.CA
	port  int
	dns   *dnsAnswers
	peers map[string]*peer
}

// newWorld starts one peer per name, each on its own 127.x.y.z address, with
// a certificate from a fresh test CA for certNames[name] ("$ip" stands for
// the peer's address), or from other[name] when given.
func newWorld(t *testing.T, certNames map[string][]string, other ...map[string]*testkit.CA) *world {
	t.Helper()
	w := &world{t: t, ca: testkit.NewCA(t), dns: &dnsAnswers{hosts: map[string][]string{}, srv: map[string][]*net.SRV{}}, peers: map[string]*peer{}}
	var names []string
	for n := range certNames {
		names = append(names, n)
	}
	for attempt := 0; ; attempt++ {
		base := fmt.Sprintf("127.%d.%d.", 64+rand.IntN(128), rand.IntN(250))
		first, err := net.Listen("tcp", base+"1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lis := []net.Listener{first}
		ok := true
		for i := 1; i < len(names); i++ {
			l, err := net.Listen("tcp", base+strconv.Itoa(i+1)+":"+strconv.Itoa(port))
			if err != nil {
				ok = false
				break
			}
			lis = append(lis, l)
		}
		if !ok {
			for _, l := range lis {
				l.Close()
			}
			if attempt > 20 {
				t.Fatal("no shared free port on loopback")
			}
			continue
		}
		w.port = port
		for i, n := range names {
			p := &peer{name: n, addr: lis[i].Addr().String()}
			p.srv = httptest.NewUnstartedServer(p.handler())
			p.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
			p.srv.Listener.Close()
			p.srv.Listener = lis[i]
			ip, _, _ := net.SplitHostPort(p.addr)
			var hosts []string
			for _, h := range certNames[n] {
				hosts = append(hosts, strings.ReplaceAll(h, "$ip", ip))
			}
			issuer := w.ca
			if len(other) > 0 && other[0][n] != nil {
				issuer = other[0][n]
			}
			p.srv.TLS = issuer.TLSConfig(t, hosts...)
			p.srv.StartTLS()
			t.Cleanup(p.srv.Close)
			w.peers[n] = p
		}
		return w
	}
}

func (w *world) ip(name string) string {
	host, _, _ := net.SplitHostPort(w.peers[name].addr)
	return host
}

// transport is a federation transport of this world: its DNS, its CA, its
// port, loopback allowed.
func (w *world) transport(mutate func(*federation.Config, *federation.Options)) *federation.Transport {
	w.t.Helper()
	cfg := federation.DefaultConfig()
	cfg.Enabled = true
	cfg.TrustedCAFiles = []string{w.ca.CertFile}
	cfg.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	opts := federation.Options{Logger: zaptest.NewLogger(w.t), Resolver: w.dns, WellKnownPort: w.port, DefaultPort: w.port}
	if mutate != nil {
		mutate(&cfg, &opts)
	}
	opts.Config = cfg
	tr, err := federation.NewTransport(opts)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// version asks serverName for its version through gomatrixserverlib's
// client and returns which peer answered, and the Host header and SNI it
// saw.
func version(t *testing.T, tr *federation.Transport, serverName string) (peerName, host, sni string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := tr.NewKeyClient().GetVersion(ctx, spec.ServerName(serverName))
	if err != nil {
		return "", "", "", err
	}
	host, sni, _ = strings.Cut(v.Server.Version, "|")
	return v.Server.Name, host, sni, nil
}

func mustVersion(t *testing.T, tr *federation.Transport, serverName, wantPeer, wantHost, wantSNI string) {
	t.Helper()
	name, host, sni, err := version(t, tr, serverName)
	if err != nil {
		t.Fatalf("%s: %v", serverName, err)
	}
	if name != wantPeer || host != wantHost || sni != wantSNI {
		t.Fatalf("%s: reached %s with Host %q, SNI %q; want %s, %q, %q", serverName, name, host, sni, wantPeer, wantHost, wantSNI)
	}
}

// TestDiscovery follows each step of the spec's server name resolution
// through real HTTPS requests: IP literal, explicit port, well-known with a
// port, well-known to a hostname resolved by SRV, SRV _matrix-fed._tcp,
// the deprecated _matrix._tcp, and the default port; with the Host header
// and certificate name each step prescribes, and the static map first.
func TestDiscovery(t *testing.T) {
	w := newWorld(t, map[string][]string{
		"ip":        {"$ip"},
		"explicit":  {"explicit.test"},
		"wk":        {"wk.test"},
		"delegated": {"delegated.test"},
		"srvhost":   {"srvhost.test"},
		"oldsrv":    {"oldsrv.test"},
		"plain":     {"plain.test"},
		"mapped":    {"mapped.test"},
	})
	port := strconv.Itoa(w.port)
	w.dns.hosts = map[string][]string{
		"explicit.test":   {w.ip("explicit")},
		"wk.test":         {w.ip("wk")},
		"delegated.test":  {w.ip("delegated")},
		"target.test":     {w.ip("srvhost")},
		"old-target.test": {w.ip("oldsrv")},
		"plain.test":      {w.ip("plain")},
		"srvhost.test":    {"127.0.0.1"}, // its SRV record, not its address, is to be used
		"oldsrv.test":     {"127.0.0.1"},
	}
	w.dns.srv = map[string][]*net.SRV{
		"_matrix-fed._tcp.srvhost.test": {{Target: "target.test.", Port: uint16(w.port)}},
		"_matrix._tcp.oldsrv.test":      {{Target: "old-target.test.", Port: uint16(w.port)}},
	}
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "delegated.test:` + port + `"}`})
	tr := w.transport(func(c *federation.Config, _ *federation.Options) {
		c.ServerNameMap = map[string]string{"mapped.test": w.peers["mapped"].addr}
	})

	// 1. IP literal with a port: that address; Host is the server name;
	// no SNI for an IP (the certificate is checked against the IP).
	mustVersion(t, tr, w.peers["ip"].addr, "ip", w.peers["ip"].addr, "")
	// 2. Hostname with an explicit port.
	mustVersion(t, tr, "explicit.test:"+port, "explicit", "explicit.test:"+port, "explicit.test")
	// 3.2 well-known naming a hostname with a port: Host is that value.
	mustVersion(t, tr, "wk.test", "delegated", "delegated.test:"+port, "delegated.test")
	// 4. no well-known: SRV _matrix-fed._tcp; Host and certificate are
	// the server name, not the SRV target.
	mustVersion(t, tr, "srvhost.test", "srvhost", "srvhost.test", "srvhost.test")
	// 5. the deprecated _matrix._tcp when there is no _matrix-fed._tcp.
	mustVersion(t, tr, "oldsrv.test", "oldsrv", "oldsrv.test", "oldsrv.test")
	// 6. neither: the hostname's address, default port.
	mustVersion(t, tr, "plain.test", "plain", "plain.test", "plain.test")
	// The static map wins over discovery (mapped.test has no DNS at all).
	mustVersion(t, tr, "mapped.test", "mapped", "mapped.test", "mapped.test")

	// 3.3: well-known naming a hostname without a port: its SRV record.
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "srvhost.test"}`})
	tr2 := w.transport(nil)
	mustVersion(t, tr2, "wk.test", "srvhost", "srvhost.test", "srvhost.test")

	// 3.1: well-known naming an IP literal: Host is the literal.
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "` + w.peers["ip"].addr + `"}`})
	tr3 := w.transport(nil)
	mustVersion(t, tr3, "wk.test", "ip", w.peers["ip"].addr, "")

	// An invalid well-known (bad JSON, no m.server, not a server name) is
	// skipped: on to SRV and the default port.
	for _, body := range []string{`not json`, `{}`, `{"m.server": "bad name!"}`, `{"m.server": 7}`} {
		w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: body})
		mustVersion(t, w.transport(nil), "wk.test", "wk", "wk.test", "wk.test")
	}

	// Invalid server names are refused before any network use.
	for _, bad := range []string{"", "under_score.test", "x.test:99999"} {
		if _, _, _, err := version(t, tr, bad); !errors.Is(err, federation.ErrInvalidServerName) {
			t.Errorf("%q: want ErrInvalidServerName, got %v", bad, err)
		}
	}
}

// TestWellKnownCache: a well-known answer is cached for its max-age (so a
// changed answer is not seen until then), and fetched again after it.
func TestWellKnownCache(t *testing.T) {
	w := newWorld(t, map[string][]string{"wk": {"wk.test"}, "one": {"one.test"}, "two": {"two.test"}})
	port := strconv.Itoa(w.port)
	w.dns.hosts = map[string][]string{"wk.test": {w.ip("wk")}, "one.test": {w.ip("one")}, "two.test": {w.ip("two")}}
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	tr := w.transport(func(_ *federation.Config, o *federation.Options) {
		o.Now = func() time.Time { return time.Unix(0, now.Load()) }
	})
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "one.test:` + port + `"}`,
		header: http.Header{"Cache-Control": {"public, max-age=600"}}})
	mustVersion(t, tr, "wk.test", "one", "one.test:"+port, "one.test")
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "two.test:` + port + `"}`})
	for range 3 {
		mustVersion(t, tr, "wk.test", "one", "one.test:"+port, "one.test")
	}
	if hits := w.peers["wk"].wkHits.Load(); hits != 1 {
		t.Fatalf("well-known fetched %d times within its max-age, want 1", hits)
	}
	now.Add(int64(9 * time.Minute))
	mustVersion(t, tr, "wk.test", "one", "one.test:"+port, "one.test")
	now.Add(int64(2 * time.Minute)) // past max-age=600
	mustVersion(t, tr, "wk.test", "two", "two.test:"+port, "two.test")
	if hits := w.peers["wk"].wkHits.Load(); hits != 2 {
		t.Fatalf("well-known fetched %d times, want 2", hits)
	}

	// A failed well-known is cached too (for 5 minutes at first): the
	// fallback (the hostname, default port) is used meanwhile.
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 404, body: `{}`})
	now.Add(int64(49 * time.Hour))
	mustVersion(t, tr, "wk.test", "wk", "wk.test", "wk.test")
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "one.test:` + port + `"}`})
	mustVersion(t, tr, "wk.test", "wk", "wk.test", "wk.test")
	now.Add(int64(6 * time.Minute))
	mustVersion(t, tr, "wk.test", "one", "one.test:"+port, "one.test")
}

// TestSSRF: non-public addresses are refused unless allowed, however they
// are reached: an IP literal, a name the DNS resolves to one (also the real
// resolver's "localhost"), a well-known answer, a well-known redirect, an
// SRV target, the static map, an IPv4-mapped IPv6 literal.
func TestSSRF(t *testing.T) {
	w := newWorld(t, map[string][]string{"wk": {"wk.test"}, "inner": {"inner.test", "localhost", "rebind.test", "srvto.test", "mapped.test"}, "redir": {"redir.test"}})
	port := strconv.Itoa(w.port)
	inner := w.peers["inner"]
	innerIP := w.ip("inner")
	w.dns.hosts = map[string][]string{
		"wk.test": {w.ip("wk")}, "redir.test": {w.ip("redir")},
		"inner.test": {innerIP}, "rebind.test": {innerIP}, "srvto.test": {w.ip("wk")},
	}
	w.dns.srv = map[string][]*net.SRV{"_matrix-fed._tcp.srvto.test": {{Target: "inner.test.", Port: uint16(w.port)}}}
	w.peers["wk"].wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "inner.test:` + port + `"}`})
	w.peers["redir"].wellKnown.Store(&wellKnownAnswer{status: 302, header: http.Header{"Location": {"https://inner.test:" + port + "/.well-known/matrix/server"}}})
	inner.wellKnown.Store(&wellKnownAnswer{status: 200, body: `{"m.server": "inner.test:` + port + `"}`})

	// Only the outer servers' own addresses are allowed: every way to the
	// inner one must be refused.
	strict := func(c *federation.Config, o *federation.Options) {
		c.AllowedPrivateNetworks = []string{w.ip("wk") + "/32", w.ip("redir") + "/32"}
		c.ServerNameMap = map[string]string{"mapped.test": inner.addr}
	}
	cases := []string{
		inner.addr,                         // IP literal
		"[::ffff:" + innerIP + "]:" + port, // IPv4-mapped IPv6 literal
		"rebind.test:" + port,              // DNS answer
		"wk.test",                          // well-known answer
		"srvto.test",                       // SRV target
		"mapped.test",                      // static map
	}
	for _, name := range cases {
		_, _, _, err := version(t, w.transport(strict), name)
		if !errors.Is(err, federation.ErrForbiddenAddress) {
			t.Errorf("%s: want ErrForbiddenAddress, got %v", name, err)
		}
	}
	// The redirect: the well-known fetch is refused, so discovery falls
	// back to redir.test itself (which is allowed) — never the inner server.
	if name, _, _, err := version(t, w.transport(strict), "redir.test"); err != nil || name != "redir" {
		t.Errorf("redir.test: reached %q (%v), want the fallback to redir.test itself", name, err)
	}
	if hits := inner.wkHits.Load(); hits != 0 {
		t.Errorf("the inner server's well-known was fetched %d times through the redirect", hits)
	}
	// The real resolver: localhost is loopback.
	tr, err := federation.NewTransport(federation.Options{Config: federation.Config{Enabled: true, TrustedCAFiles: []string{w.ca.CertFile}}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := version(t, tr, "localhost:"+port); !errors.Is(err, federation.ErrForbiddenAddress) {
		t.Errorf("localhost: want ErrForbiddenAddress, got %v", err)
	}

	// With the inner address allowed, the same paths reach it.
	open := func(c *federation.Config, o *federation.Options) {
		strict(c, o)
		c.AllowedPrivateNetworks = append(c.AllowedPrivateNetworks, innerIP+"/32")
	}
	for _, name := range cases[2:] {
		if got, _, _, err := version(t, w.transport(open), name); err != nil || got != "inner" {
			t.Errorf("%s with the address allowed: reached %q (%v)", name, got, err)
		}
	}
}

// TestIsPublic covers the address classes the SSRF rule refuses.
func TestIsPublic(t *testing.T) {
	for addr, want := range map[string]bool{
		"8.8.8.8": true, "1.1.1.1": true, "2606:4700::1111": true, "64:ff9b::808:808": true, "2002:808:808::1": true,
		"127.0.0.1": false, "127.9.9.9": false, "::1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false,
		"169.254.169.254": false, "fe80::1": false, "fc00::1": false, "fd12::1": false, "0.0.0.0": false, "::": false,
		"100.64.0.1": false, "192.0.2.1": false, "198.18.0.1": false, "224.0.0.1": false, "255.255.255.255": false,
		"240.0.0.1": false, "::ffff:127.0.0.1": false, "::ffff:8.8.8.8": true, "64:ff9b::7f00:1": false,
		"2002:7f00:1::1": false, "2001:db8::1": false, "ff02::1": false, "::127.0.0.1": false, "100::1": false,
	} {
		if got := federation.IsPublic(netip.MustParseAddr(addr)); got != want {
			t.Errorf("IsPublic(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestTLS: a certificate from a CA the transport does not trust is
// refused; trusted through trusted_ca_files it is accepted;
// insecure_skip_tls_verify accepts anything. A certificate for another
// name is refused.
func TestTLS(t *testing.T) {
	stranger := testkit.NewCA(t)
	w := newWorld(t, map[string][]string{"good": {"good.test"}, "other": {"other.test"}}, map[string]*testkit.CA{"other": stranger})
	w.dns.hosts = map[string][]string{"good.test": {w.ip("good")}, "other.test": {w.ip("other")}, "wrongname.test": {w.ip("good")}}
	port := strconv.Itoa(w.port)

	tr := w.transport(nil)
	mustVersion(t, tr, "good.test:"+port, "good", "good.test:"+port, "good.test")
	var unknownAuthority x509.UnknownAuthorityError
	if _, _, _, err := version(t, tr, "other.test:"+port); !errors.As(err, &unknownAuthority) {
		t.Fatalf("certificate of an unknown CA: want an unknown authority error, got %v", err)
	}
	if _, _, _, err := version(t, tr, "wrongname.test:"+port); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("certificate for another name: want a certificate error, got %v", err)
	}
	withCA := w.transport(func(c *federation.Config, _ *federation.Options) {
		c.TrustedCAFiles = append(c.TrustedCAFiles, stranger.CertFile)
	})
	mustVersion(t, withCA, "other.test:"+port, "other", "other.test:"+port, "other.test")
	skip := w.transport(func(c *federation.Config, _ *federation.Options) {
		c.TrustedCAFiles = nil
		c.InsecureSkipTLSVerify = true
	})
	mustVersion(t, skip, "other.test:"+port, "other", "other.test:"+port, "other.test")
	mustVersion(t, skip, "wrongname.test:"+port, "good", "wrongname.test:"+port, "wrongname.test")

	// A CA file that is missing or holds no certificate is a
	// configuration error.
	for _, file := range []string{t.TempDir() + "/missing.pem", w.ca.CertFile + ".none"} {
		if _, err := federation.NewTransport(federation.Options{Config: federation.Config{TrustedCAFiles: []string{file}}}); err == nil {
			t.Errorf("CA file %s accepted", file)
		}
	}
	empty := t.TempDir() + "/empty.pem"
	if err := os.WriteFile(empty, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := federation.NewTransport(federation.Options{Config: federation.Config{TrustedCAFiles: []string{empty}}}); err == nil {
		t.Error("a CA file without a certificate was accepted")
	}
}

// TestDisabled: with federation.enabled off nothing leaves.
func TestDisabled(t *testing.T) {
	w := newWorld(t, map[string][]string{"good": {"good.test"}})
	w.dns.hosts = map[string][]string{"good.test": {w.ip("good")}}
	tr := w.transport(func(c *federation.Config, _ *federation.Options) { c.Enabled = false })
	if _, _, _, err := version(t, tr, "good.test:"+strconv.Itoa(w.port)); !errors.Is(err, federation.ErrDisabled) {
		t.Fatalf("want ErrDisabled, got %v", err)
	}
}

// TestResponseLimit: a response body past MaxResponseBody fails to read
// (a remote cannot make a caller buffer without end); one within it reads.
func TestResponseLimit(t *testing.T) {
	w := newWorld(t, map[string][]string{"good": {"good.test"}})
	w.dns.hosts = map[string][]string{"good.test": {w.ip("good")}}
	server := "good.test:" + strconv.Itoa(w.port)
	small := w.transport(func(_ *federation.Config, o *federation.Options) { o.MaxResponseBody = 20 })
	if _, _, _, err := version(t, small, server); !errors.Is(err, federation.ErrResponseTooLarge) {
		t.Fatalf("a body past the limit: want ErrResponseTooLarge, got %v", err)
	}
	mustVersion(t, w.transport(nil), server, "good", server, "good.test")
}
