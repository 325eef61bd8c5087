package e2e

import (
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// fedServer is one Myelin deployment of a federation test.
type fedServer struct {
	*server
	// name is its server name (users are @x:name).
	name string
	// fedAddr is its public federation listener (HTTPS, a certificate
	// for name from the test CA): the all-in-one process's, or the edge's
	// in the split shape.
	fedAddr string
}

// federating builds one deployment per server name, in the shape shape
// makes (allInOne or split), with federation on and every deployment
// reaching every other one's federation listener over HTTPS on loopback:
// a static server-name map (no discovery), certificates from ca (which
// each deployment trusts) and 127.0.0.0/8 allowed as a private network.
// Rate limits are off and the federation sender retries a failing
// destination after 200 ms, so the flows of a test do not wait on them.
// The deployments are built, not started: callers may add settings to
// their processes, then call start (and t.Cleanup their shutdown and
// dumpLogs, or use startFederating).
//
// In the split shape every process gets the federation settings (those
// with federation endpoints open a listener of their own on a free
// address; the edge's is the public one) and the client-API process is
// told where the federation sender's gRPC is.
func federating(t *testing.T, ca *testkit.CA, shape func(*testing.T) *server, names ...string) []*fedServer {
	t.Helper()
	out := make([]*fedServer, len(names))
	var nameMap []string
	for i, n := range names {
		out[i] = &fedServer{server: shape(t), name: n, fedAddr: freeAddr(t)}
		nameMap = append(nameMap, n+"="+out[i].fedAddr)
	}
	for _, fs := range out {
		common := []string{
			"MYELIN_SERVER_NAME=" + fs.name,
			"MYELIN_FEDERATION_SERVER_NAME_MAP=" + strings.Join(nameMap, ","),
			"MYELIN_FEDERATION_ALLOWED_PRIVATE_NETWORKS=127.0.0.0/8",
			"MYELIN_CLIENT_API_RATE_LIMIT_ENABLED=false",
			"MYELIN_FEDERATION_SENDER_BACKOFF_MIN=200ms",
			// Messages of at most 2 KiB: a join of a remote room (its
			// whole state added) goes out in parts, as one of a room of
			// thousands does with the default bound.
			"MYELIN_ROOM_SERVER_MAX_MESSAGE_BYTES=2048",
		}
		if len(fs.procs) == 1 {
			p := fs.procs[0]
			p.env = append(p.env, common...)
			p.env = append(p.env, fedEnv(t, ca, fs.name, fs.fedAddr)...)
			continue
		}
		senderGRPC := ""
		for _, p := range fs.procs {
			if p.name == "federation-sender" {
				senderGRPC = envValue(p.env, "MYELIN_GRPC_LISTEN")
			}
		}
		for _, p := range fs.procs {
			p.env = append(p.env, common...)
			listen := freeAddr(t)
			if p.name == "edge" {
				listen = fs.fedAddr
			}
			p.env = append(p.env, fedEnv(t, ca, fs.name, listen)...)
			if p.name == "client-api" && senderGRPC != "" {
				p.env = append(p.env, "MYELIN_SERVICES_FEDERATION_SENDER_GRPC="+senderGRPC)
			}
		}
	}
	return out
}

// startFederating starts the deployments federating built (and stops
// them, dumping their logs on failure, when the test ends).
func startFederating(t *testing.T, servers []*fedServer) {
	t.Helper()
	for _, fs := range servers {
		fs.start(t)
		t.Cleanup(func() { fs.shutdown(t); fs.dumpLogs(t) })
	}
}

// envValue is the value of the last name=value setting of name in env.
func envValue(env []string, name string) string {
	v := ""
	for _, e := range env {
		if rest, ok := strings.CutPrefix(e, name+"="); ok {
			v = rest
		}
	}
	return v
}
