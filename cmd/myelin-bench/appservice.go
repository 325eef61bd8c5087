package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// benchAppservice writes the registration of an appservice that may
// register the load generator's users (@lg..., not exclusively) into dir,
// and returns the server environment that loads it and its as_token. The
// roomsize scenario creates its 10,000 members through it, without
// hashing a password for each. It has no URL: the server sends it nothing.
func benchAppservice(dir string) ([]string, string, error) {
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
		return nil, "", err
	}
	path := filepath.Join(dir, "bench-appservice.yaml")
	if err := os.WriteFile(path, []byte(reg), 0o644); err != nil {
		return nil, "", err
	}
	return []string{"MYELIN_APPSERVICE_CONFIG_FILES=" + path}, as, nil
}
