package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/myelin-chat/myelin/pkg/devinfra"
	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// benchServerName is the server under load's name in the federation
// scenarios; peers are peer<n>.bench.test. None resolves: the server's
// static server-name map points the peers' names at their loopback
// listeners, and the peers dial the server's federation listener directly.
const benchServerName = "bench.test"

// federationSetup makes a throwaway CA, the server's federation
// certificate and one listener per peer, and returns the server's
// federation settings (MYELIN_* variables) and the load generator's
// target (its Addr is the server's federation listener).
func federationSetup(dir string, peers int) ([]string, *loadgen.FederationTarget, func(), error) {
	tlsDir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		return nil, nil, nil, err
	}
	ca, err := devinfra.NewCA(tlsDir, "myelin-bench CA")
	if err != nil {
		return nil, nil, nil, err
	}
	certFile, keyFile, err := ca.Issue(benchServerName)
	if err != nil {
		return nil, nil, nil, err
	}
	fedAddr, err := freeAddr()
	if err != nil {
		return nil, nil, nil, err
	}
	target := &loadgen.FederationTarget{ServerName: benchServerName, Addr: fedAddr,
		ClientTLS: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}}
	closeAll := func() {
		for _, p := range target.Peers {
			_ = p.Listener.Close()
		}
	}
	var nameMap []string
	for i := range peers {
		name := fmt.Sprintf("peer%d.%s", i+1, benchServerName)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closeAll()
			return nil, nil, nil, err
		}
		target.Peers = append(target.Peers, loadgen.PeerSlot{Name: name, Listener: lis})
		cfg, err := ca.ServerTLS(name)
		if err != nil {
			closeAll()
			return nil, nil, nil, err
		}
		target.Peers[i].TLS = cfg
		nameMap = append(nameMap, name+"="+lis.Addr().String())
	}
	env := []string{
		"MYELIN_SERVER_NAME=" + benchServerName,
		"MYELIN_FEDERATION_ENABLED=true",
		"MYELIN_FEDERATION_LISTEN=" + fedAddr,
		"MYELIN_FEDERATION_TLS_CERT_FILE=" + certFile,
		"MYELIN_FEDERATION_TLS_KEY_FILE=" + keyFile,
		"MYELIN_FEDERATION_TRUSTED_CA_FILES=" + ca.CertFile,
		"MYELIN_FEDERATION_SERVER_NAME_MAP=" + strings.Join(nameMap, ","),
		"MYELIN_FEDERATION_ALLOWED_PRIVATE_NETWORKS=127.0.0.0/8",
	}
	return env, target, closeAll, nil
}
