package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// TestRegisterUserCLI runs `myelin register-user` as an OS process against
// the split shape, so the request also crosses the edge router: it creates
// an admin through shared-secret registration, the admin logs in with the
// password and may use the admin API; a wrong secret creates nothing.
func TestRegisterUserCLI(t *testing.T) {
	const secret = "e2e-shared-secret"
	s := split(t)
	for _, p := range s.procs {
		if p.name == "client-api" {
			p.env = append(p.env, "MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET="+secret)
		}
	}
	s.start(t)
	t.Cleanup(func() { s.stop(t); s.dumpLogs(t) })

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command(myelinBinary(t), append([]string{"register-user", "-url", s.url}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := cli("s3cret pass\n", "-secret-file", secretFile, "-user", "root", "-password-file", "-", "-admin")
	if err != nil {
		t.Fatalf("register-user: %v: %s", err, out)
	}
	if !strings.Contains(out, "@root:") {
		t.Fatalf("register-user output %q does not name the user", out)
	}

	// Wrong secret: refused with M_FORBIDDEN, no account.
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = cli("", "-secret-file", bad, "-user", "mallory", "-password", "x")
	if err == nil || !strings.Contains(out, "M_FORBIDDEN") {
		t.Fatalf("wrong secret: err %v, output %q", err, out)
	}
	// The same user twice: M_USER_IN_USE.
	out, err = cli("", "-secret", secret, "-user", "root", "-password", "x")
	if err == nil || !strings.Contains(out, "M_USER_IN_USE") {
		t.Fatalf("duplicate: err %v, output %q", err, out)
	}

	mx, err := mautrix.NewClient(s.url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := mx.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "root"},
		Password: "s3cret pass", StoreCredentials: true,
	}); err != nil {
		t.Fatalf("login as the new admin: %v", err)
	}
	if code, body := do(t, http.MethodGet, s.url+"/_synapse/admin/v1/registration_tokens", mx.AccessToken, nil); code != http.StatusOK {
		t.Fatalf("admin API as the new admin: %d %s", code, body)
	}
	if _, err := mx.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "mallory"}, Password: "x",
	}); err == nil {
		t.Fatal("an account was created with the wrong secret")
	}
}
