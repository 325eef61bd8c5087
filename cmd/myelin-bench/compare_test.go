package main

import (
	"strings"
	"testing"
)

// Dendrite's configuration keeps the fairness the comparison promises:
// a pool that keeps its connections, no rate limits, no federation, and
// the database the bench gives it, through the cluster's socket.
func TestDendriteConfig(t *testing.T) {
	dsn, err := libpqDSN("postgres://myelin@/dendrite?host=%2Ftmp%2Fpg&port=5433&sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if want := "host=/tmp/pg port=5433 user=myelin dbname=dendrite sslmode=disable"; dsn != want {
		t.Fatalf("DSN %q, want %q", dsn, want)
	}
	cfg, err := renderDendriteConfig("/tmp/d", dsn)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`connection_string: "` + dsn + `"`,
		"max_open_conns: 90\n", "max_idle_conns: 90\n", "conn_max_lifetime: -1\n",
		"disable_federation: true\n",
		"rate_limiting:\n    enabled: false\n",
		"registration_disabled: false\n",
		"private_key: /tmp/d/matrix_key.pem\n",
		"storage_path: /tmp/d/jetstream\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("configuration lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "{{") || strings.Contains(cfg, "<no value>") {
		t.Errorf("unfilled template field:\n%s", cfg)
	}
}
