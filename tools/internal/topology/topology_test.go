package topology

import (
	"strings"
	"testing"
)

// split is a correctly wired split shape, reachable by service name.
func split() ([]Process, []Endpoint) {
	base := func(extra map[string]string) Settings {
		s := Settings{
			"server_name": "example.org", "http.listen": "0.0.0.0:8008", "grpc.listen": "0.0.0.0:9000",
			"database.url": Secret, "nats.url": "nats://nats:4222", "logging.format": "json",
		}
		for k, v := range extra {
			s[k] = v
		}
		return s
	}
	procs := []Process{
		{Name: "ks", Args: []string{"-target", "key-server"}, Settings: base(nil)},
		{Name: "rs", Args: []string{"-target=room-server"}, Settings: base(map[string]string{"services.key_server.grpc": "key-server:9000"})},
		{Name: "ca", Args: []string{"-target", "client-api"}, Settings: base(map[string]string{
			"services.key_server.grpc": "key-server:9000", "services.room_server.grpc": "dns:///room-server:9000",
			"services.presence.grpc": "presence:9000", "services.media.grpc": "media:9000",
		})},
		{Name: "edge", Args: []string{"-target", "edge"}, Settings: Settings{
			"server_name": "example.org", "http.listen": "0.0.0.0:8008", "grpc.listen": "0.0.0.0:9000",
			"services.client_api.http": "http://client-api:80", "services.key_server.http": "key-server:8008",
			"services.media.http": "media:8008",
		}},
		{Name: "ps", Args: []string{"-target", "presence"}, Settings: base(map[string]string{"services.room_server.grpc": "room-server:9000"})},
		{Name: "ms", Args: []string{"-target", "media"}, Settings: base(map[string]string{
			"services.client_api.grpc": "client-api-grpc:9000", "media.storage.path": "/var/lib/myelin/media",
		})},
		{Name: "fr", Args: []string{"-target", "federation-receiver"}, Settings: base(map[string]string{
			"services.key_server.grpc": "key-server:9000", "services.room_server.grpc": "room-server:9000",
			"services.presence.grpc": "presence:9000", "services.client_api.grpc": "client-api-grpc:9000",
			"federation_receiver.fetch_timeout": "10s",
		})},
		{Name: "fs", Args: []string{"-target", "federation-sender"}, Settings: base(map[string]string{
			"services.key_server.grpc": "key-server:9000", "services.room_server.grpc": "room-server:9000",
			"federation_sender.backoff_max": "1h",
		})},
	}
	endpoints := []Endpoint{
		{Host: "key-server", Port: 9000, Process: "ks", TargetPort: 9000},
		{Host: "key-server", Port: 8008, Process: "ks", TargetPort: 8008},
		{Host: "room-server", Port: 9000, Process: "rs", TargetPort: 9000},
		{Host: "client-api", Port: 80, Process: "ca", TargetPort: 8008},
		{Host: "presence", Port: 9000, Process: "ps", TargetPort: 9000},
		{Host: "client-api-grpc", Port: 9000, Process: "ca", TargetPort: 9000},
		{Host: "media", Port: 9000, Process: "ms", TargetPort: 9000},
		{Host: "media", Port: 8008, Process: "ms", TargetPort: 8008},
		{Host: "federation-sender", Port: 9000, Process: "fs", TargetPort: 9000},
		{Host: "federation-receiver", Port: 8008, Process: "fr", TargetPort: 8008},
	}
	return procs, endpoints
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name   string
		change func(p []Process, e []Endpoint) []Endpoint
		want   []string // substrings of the errors, in any order; none = valid
	}{
		{name: "valid", change: func(p []Process, e []Endpoint) []Endpoint { return e }},
		{name: "all-in-one needs no addresses", change: func(p []Process, e []Endpoint) []Endpoint {
			p[0].Args = []string{"-target", "all"}
			p[1].Args = []string{"-target", "all,edge"}
			delete(p[1].Settings, "services.key_server.grpc")
			return e
		}},
		{name: "federation on: the edge forwards to the receiver, media asks the key-server", change: func(p []Process, e []Endpoint) []Endpoint {
			for _, i := range []int{3, 5} {
				p[i].Settings["federation.enabled"] = "true"
				p[i].Settings["federation.tls_cert_file"] = "/tls/tls.crt"
				p[i].Settings["federation.tls_key_file"] = "/tls/tls.key"
			}
			return e
		}, want: []string{"edge: services.federation_receiver.http is not set", "ms: services.key_server.grpc is not set"}},
		{name: "federation on without certificates", change: func(p []Process, e []Endpoint) []Endpoint {
			p[6].Settings["federation.enabled"] = "true"
			return e
		}, want: []string{"fr: federation.enabled without federation.tls_cert_file"}},
		{name: "receiver without its peers", change: func(p []Process, e []Endpoint) []Endpoint {
			delete(p[6].Settings, "services.presence.grpc")
			return e
		}, want: []string{"fr: services.presence.grpc is not set"}},
		{name: "missing address", change: func(p []Process, e []Endpoint) []Endpoint {
			delete(p[2].Settings, "services.room_server.grpc")
			return e
		}, want: []string{"ca: services.room_server.grpc is not set"}},
		{name: "key-server without NATS (it publishes key changes)", change: func(p []Process, e []Endpoint) []Endpoint {
			delete(p[0].Settings, "nats.url")
			return e
		}, want: []string{"ks: nats.url is not set"}},
		{name: "wrong port", change: func(p []Process, e []Endpoint) []Endpoint {
			p[1].Settings["services.key_server.grpc"] = "key-server:9001"
			return e
		}, want: []string{"rs: services.key_server.grpc=key-server:9001 reaches no process"}},
		{name: "service forwards to the wrong container port", change: func(p []Process, e []Endpoint) []Endpoint {
			e[3].TargetPort = 9000
			return e
		}, want: []string{"arrives at port 9000 of ca, which listens for http on 8008"}},
		{name: "gRPC through a virtual address", change: func(p []Process, e []Endpoint) []Endpoint {
			e[0].OneAddress = true
			return e
		}, want: []string{"rs: services.key_server.grpc=key-server:9000 reaches ks through one virtual address",
			"ca: services.key_server.grpc=key-server:9000 reaches ks through one virtual address",
			"fr: services.key_server.grpc=key-server:9000 reaches ks through one virtual address",
			"fs: services.key_server.grpc=key-server:9000 reaches ks through one virtual address"}},
		{name: "HTTP through a virtual address", change: func(p []Process, e []Endpoint) []Endpoint {
			e[1].OneAddress, e[3].OneAddress = true, true
			return e
		}},
		{name: "address of another service", change: func(p []Process, e []Endpoint) []Endpoint {
			p[3].Settings["services.key_server.http"] = "client-api:80"
			return e
		}, want: []string{"reaches ca, which does not run key-server"}},
		{name: "loopback listen", change: func(p []Process, e []Endpoint) []Endpoint {
			p[0].Settings["grpc.listen"] = "127.0.0.1:9000"
			return e
		}, want: []string{"ks: grpc.listen: 127.0.0.1:9000 is a loopback address"}},
		{name: "loopback metrics listener", change: func(p []Process, e []Endpoint) []Endpoint {
			p[1].Settings["metrics.listen"] = "127.0.0.1:9100"
			p[2].Settings["metrics.listen"] = "0.0.0.0:9100"
			return e
		}, want: []string{"rs: metrics.listen: 127.0.0.1:9100 is a loopback address"}},
		{name: "no database, no nats", change: func(p []Process, e []Endpoint) []Endpoint {
			delete(p[1].Settings, "database.url")
			delete(p[1].Settings, "nats.url")
			return e
		}, want: []string{"rs: database.url is not set", "rs: nats.url is not set"}},
		{name: "the federation sender calls the key-server and the room-server and needs NATS", change: func(p []Process, e []Endpoint) []Endpoint {
			delete(p[7].Settings, "services.room_server.grpc")
			delete(p[7].Settings, "nats.url")
			p[7].Settings["services.key_server.grpc"] = "federation-sender:9000"
			return e
		}, want: []string{"fs: services.room_server.grpc is not set", "fs: nats.url is not set",
			"fs: services.key_server.grpc=federation-sender:9000 reaches fs, which does not run key-server"}},
		{name: "media and client-api call each other; the edge forwards to media", change: func(p []Process, e []Endpoint) []Endpoint {
			delete(p[5].Settings, "services.client_api.grpc")
			delete(p[2].Settings, "services.media.grpc")
			p[3].Settings["services.media.http"] = "client-api:80"
			return e
		}, want: []string{"ms: services.client_api.grpc is not set", "ca: services.media.grpc is not set",
			"edge: services.media.http=client-api:80 reaches ca, which does not run media"}},
		{name: "unknown target and key", change: func(p []Process, e []Endpoint) []Endpoint {
			p[3].Args = []string{"-target", "edg"}
			p[0].Settings["natz.url"] = "x"
			return e
		}, want: []string{`edge: unknown target "edg"`, `ks: "natz.url" is not a Myelin setting`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			procs, endpoints := split()
			endpoints = tc.change(procs, endpoints)
			errs := Check(procs, endpoints)
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("errors %q, want %d matching %q", got, len(tc.want), tc.want)
			}
			for _, w := range tc.want {
				found := false
				for _, g := range got {
					found = found || strings.Contains(g, w)
				}
				if !found {
					t.Errorf("no error contains %q; got %q", w, got)
				}
			}
		})
	}
}

func TestKeyOfEnv(t *testing.T) {
	for env, want := range map[string]string{
		"MYELIN_SERVICES_ROOM_SERVER_GRPC": "services.room_server.grpc",
		"MYELIN_DATABASE_URL":              "database.url",
		"MYELIN_KEY_SERVER_KEY_VALIDITY":   "key_server.key_validity",
		"MYELIN_DATA_DIR":                  "data_dir",
	} {
		got, err := KeyOfEnv(env)
		if err != nil || got != want {
			t.Errorf("KeyOfEnv(%s) = %q, %v; want %q", env, got, err, want)
		}
	}
	for _, bad := range []string{"MYELIN_NATS_REPLICA", "MYELIN_SERVICES_ROOMSERVER_GRPC", "MYELIN_KEY_SERVER_"} {
		if _, err := KeyOfEnv(bad); err == nil {
			t.Errorf("KeyOfEnv(%s) accepted", bad)
		}
	}
}
