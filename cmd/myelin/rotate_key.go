package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
)

// rotateKey is `myelin rotate-key`: it asks the running key-server (over
// gRPC, ServerKeyService.RotateKey) to replace the signing key. The old
// key moves to old_verify_keys, so what it signed still verifies.
func rotateKey(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("myelin rotate-key", flag.ContinueOnError)
	configPath := fs.String("config", "", "path to the YAML configuration (optional; MYELIN_* environment variables override it)")
	addr := fs.String("grpc", "", "the key-server's gRPC address (default: services.key_server.grpc, else grpc.listen of the configuration)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the key-server")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	target := *addr
	var creds *rpc.Credentials
	if target == "" || *configPath != "" {
		cfg, err := myelin.Load(*configPath)
		if err != nil {
			return err
		}
		if target == "" {
			if target, err = keyServerAddress(cfg); err != nil {
				return err
			}
		}
		// With grpc.tls the key-server admits the key-server's own
		// certificate (run this in its pod) or one named myelin-admin.
		if creds, err = rpc.LoadCredentials(cfg.GRPC.TLS); err != nil {
			return err
		}
	}
	conn, err := rpc.DialTLS(target, creds)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	resp, err := keyserverv1.NewServerKeyServiceClient(conn).RotateKey(ctx, &keyserverv1.RotateKeyRequest{})
	if err != nil {
		return fmt.Errorf("rotate the signing key at %s: %w", target, err)
	}
	_, err = fmt.Fprintf(out, "new signing key %s; %s is now an old key (expired_ts %d)\n", resp.GetKeyId(), resp.GetOldKeyId(), resp.GetOldKeyExpiredTs())
	return err
}

// keyServerAddress is where the configuration says the key-server's gRPC
// API is: services.key_server.grpc, or this configuration's own
// grpc.listen when it has a fixed port (the key-server runs in that
// process).
func keyServerAddress(cfg myelin.Config) (string, error) {
	if a := cfg.Services.KeyServer.GRPC; a != "" {
		return a, nil
	}
	host, port, err := net.SplitHostPort(cfg.GRPC.Listen)
	if err != nil || port == "0" || port == "" {
		return "", errors.New("the key-server's gRPC address is unknown: pass -grpc host:port or set services.key_server.grpc (grpc.listen has no fixed port)")
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}
