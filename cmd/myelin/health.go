package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/myelin-chat/myelin/pkg/myelin"
)

// health is `myelin health`: it asks the process configured here (its
// http.listen) for /readyz (or -path) and fails unless the answer is 200.
// It is the container healthcheck of images without a shell or curl.
func health(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("myelin health", flag.ContinueOnError)
	configPath := fs.String("config", "", "path to the YAML configuration (optional; MYELIN_* environment variables override it)")
	path := fs.String("path", "/readyz", "what to ask: /readyz (ready to serve) or /healthz (alive)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	cfg, err := myelin.Load(*configPath)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("http.listen %q: %w", cfg.HTTP.Listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1" // listening on every address: ask over loopback
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+*path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", *path, resp.Status, body)
	}
	_, err = fmt.Fprintf(out, "%s\n", body)
	return err
}
