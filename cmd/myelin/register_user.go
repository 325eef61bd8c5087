package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/myelin-chat/myelin/pkg/myelin"
)

// registerUser is `myelin register-user`: it creates an account through
// the server's shared-secret registration API (/_synapse/admin/v1/register,
// as Synapse's register_new_matrix_user does), so it works against any
// running Myelin (or Synapse) whose shared secret it knows.
func registerUser(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("myelin register-user", flag.ContinueOnError)
	url := fs.String("url", "http://localhost:8008", "base URL of the homeserver")
	secret := fs.String("secret", "", "the registration shared secret")
	secretFile := fs.String("secret-file", "", "file holding the registration shared secret")
	configPath := fs.String("config", "", "read the shared secret from this Myelin configuration (client_api.registration.shared_secret)")
	user := fs.String("user", "", "localpart of the new user (required)")
	password := fs.String("password", "", "password of the new user")
	passwordFile := fs.String("password-file", "", "file holding the password ('-' reads standard input)")
	admin := fs.Bool("admin", false, "make the new user a server admin")
	displayName := fs.String("displayname", "", "display name (default: the localpart)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *user == "" {
		return errors.New("register-user: -user is required")
	}
	key, err := readSecret(*secret, *secretFile, *configPath)
	if err != nil {
		return err
	}
	pw := *password
	if *passwordFile != "" {
		var raw []byte
		if *passwordFile == "-" {
			raw, err = io.ReadAll(stdin)
		} else {
			raw, err = os.ReadFile(*passwordFile)
		}
		if err != nil {
			return fmt.Errorf("register-user: read password: %w", err)
		}
		pw = strings.TrimRight(string(raw), "\r\n")
	}
	if pw == "" {
		return errors.New("register-user: a password is required (-password or -password-file)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	endpoint := strings.TrimRight(*url, "/") + "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := callJSON(ctx, http.MethodGet, endpoint, nil, &nonce); err != nil {
		var me *matrixError
		if errors.As(err, &me) && me.status == http.StatusBadRequest {
			// Myelin and Synapse answer 400 when the server has no secret.
			return fmt.Errorf("register-user: get nonce: %w\n%s", err, sharedSecretHint)
		}
		return fmt.Errorf("register-user: get nonce: %w", err)
	}
	body := map[string]any{
		"nonce": nonce.Nonce, "username": *user, "password": pw, "admin": *admin,
		"mac": registrationMAC(key, nonce.Nonce, *user, pw, *admin),
	}
	if *displayName != "" {
		body["displayname"] = *displayName
	}
	var resp struct {
		UserID string `json:"user_id"`
	}
	if err := callJSON(ctx, http.MethodPost, endpoint, body, &resp); err != nil {
		return fmt.Errorf("register-user: %w", err)
	}
	_, err = fmt.Fprintf(stdout, "created %s\n", resp.UserID)
	return err
}

// readSecret takes the shared secret from exactly one source.
func readSecret(secret, file, configPath string) (string, error) {
	n := 0
	for _, s := range []string{secret, file, configPath} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return "", errors.New("register-user: give exactly one of -secret, -secret-file and -config")
	}
	switch {
	case file != "":
		raw, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("register-user: %w", err)
		}
		secret = strings.TrimSpace(string(raw))
	case configPath != "":
		cfg, err := myelin.Load(configPath)
		if err != nil {
			return "", err
		}
		secret = cfg.ClientAPI.Registration.SharedSecret
	}
	if secret == "" {
		if configPath != "" {
			return "", fmt.Errorf("register-user: client_api.registration.shared_secret is empty in %s (and MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET is unset); the default configuration has none\n%s", configPath, sharedSecretHint)
		}
		return "", fmt.Errorf("register-user: %s is empty", file)
	}
	return secret, nil
}

// sharedSecretHint says how to turn shared-secret registration on.
const sharedSecretHint = `Shared-secret registration needs the same secret on both sides:
  1. set client_api.registration.shared_secret in the server's configuration
     (or MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET in its environment);
  2. restart the server, so that it reads the secret;
  3. run register-user again with -config (that configuration), -secret or -secret-file.`

// matrixError is a Matrix error answer (or another non-200 one).
type matrixError struct {
	status  int
	errcode string
	message string
}

func (e *matrixError) Error() string {
	if e.errcode == "" {
		return fmt.Sprintf("HTTP %d: %.200s", e.status, e.message)
	}
	return fmt.Sprintf("%s: %s (HTTP %d)", e.errcode, e.message, e.status)
}

// registrationMAC is hex(HMAC-SHA1(secret, nonce\0user\0password\0admin|notadmin)).
func registrationMAC(secret, nonce, user, password string, admin bool) string {
	role := "notadmin"
	if admin {
		role = "admin"
	}
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + role))
	return hex.EncodeToString(m.Sum(nil))
}

// callJSON sends a JSON request and decodes a 200 response into out; a
// Matrix error becomes an error naming its errcode.
func callJSON(ctx context.Context, method, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		var merr struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(raw, &merr) == nil && merr.ErrCode != "" {
			return &matrixError{status: res.StatusCode, errcode: merr.ErrCode, message: merr.Error}
		}
		return &matrixError{status: res.StatusCode, message: string(raw)}
	}
	return json.Unmarshal(raw, out)
}
