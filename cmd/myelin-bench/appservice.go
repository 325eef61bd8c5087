package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// benchAppservice writes the registration of an appservice that may
// register the load generator's users (@lg..., not exclusively) into dir,
// and returns the path of its registration file and its as_token. The
// roomsize scenario creates its 10,000 members through it, without
// hashing a password for each. It has no URL: the server sends it nothing.
func benchAppservice(dir string) (string, string, error) {
	token := func() string {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}
	as := token()
	reg := fmt.Sprintf(`id: myelin-bench
url: null
as_token: %q
hs_token: %q
sender_localpart: lg-bench-appservice
rate_limited: false
namespaces:
  users:
    - exclusive: false
      regex: "@lg.*"
`, as, token())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	path := filepath.Join(dir, "bench-appservice.yaml")
	if err := os.WriteFile(path, []byte(reg), 0o644); err != nil {
		return "", "", err
	}
	return path, as, nil
}

// appserviceSetup registers the load generator's appservice receiver (the
// appservice scenario, loadgen.NewAppserviceTarget) and returns the
// server's settings (MYELIN_* variables) and the scenario's target (the
// caller sets its AdminURL once the server listens). backoff_max is 2 s so
// that the backlog phase's receiver, once it recovers, is tried again
// within 2 s (the drain rate is measured from the first successful
// transaction on, so the wait is not counted either way). otherFiles are
// further registrations the server loads (benchAppservice's).
func appserviceSetup(dir string, otherFiles ...string) ([]string, *loadgen.AppserviceTarget, func(), error) {
	t, path, err := loadgen.NewAppserviceTarget(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	env := []string{
		"MYELIN_APPSERVICE_CONFIG_FILES=" + strings.Join(append([]string{path}, otherFiles...), ","),
		"MYELIN_APPSERVICE_ADMIN_TOKEN=" + t.AdminToken,
		"MYELIN_APPSERVICE_BACKOFF_MAX=2s",
	}
	return env, t, func() { _ = t.Listener.Close() }, nil
}
