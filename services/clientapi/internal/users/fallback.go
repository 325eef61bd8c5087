package users

import (
	"errors"
	"html/template"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// The fallback web pages: the login fallback (GET /_matrix/static/client/login/)
// for clients that know no login flow, and the UIA fallback
// (/_matrix/client/v3/auth/{type}/fallback/web?session=...) for clients
// that cannot perform a stage themselves. The UIA page posts back to
// itself; the stage is recorded in the session, and the client then
// resubmits its request with just the session.

// LoginFallbackPath is where the spec puts the login fallback.
const LoginFallbackPath = "/_matrix/static/client/login/"

var loginFallbackPage = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<h1>Log in to {{.Server}}</h1>
<form id="login">
<p><label>User name <input name="user" autocomplete="username" required></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Log in</button></p>
<p id="status" role="status"></p>
</form>
<script>
(function () {
  var form = document.getElementById("login");
  var status = document.getElementById("status");
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    // Non-credential parameters given to this page go to /login as they are.
    var body = {};
    new URLSearchParams(window.location.search).forEach(function (v, k) { body[k] = v; });
    body.type = "m.login.password";
    body.identifier = {type: "m.id.user", user: form.user.value};
    body.password = form.password.value;
    status.textContent = "Logging in…";
    fetch("/_matrix/client/v3/login", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (resp) { return resp.json().then(function (json) { return {ok: resp.ok, json: json}; }); })
      .then(function (r) {
        if (!r.ok) { status.textContent = r.json.error || "Login failed"; return; }
        status.textContent = "Logged in.";
        if (window.matrixLogin && window.matrixLogin.onLogin) { window.matrixLogin.onLogin(r.json); }
      })
      .catch(function () { status.textContent = "Could not reach the server"; });
  });
})();
</script>
</body></html>
`))

var authFallbackPage = template.Must(template.New("auth").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Authentication</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
{{if .Done}}
<p>Thank you. You may now close this window and return to the application.</p>
<script>
if (window.onAuthDone) {
    window.onAuthDone();
} else if (window.opener && window.opener.postMessage) {
    window.opener.postMessage("authDone", "*");
}
</script>
{{else}}
<h1>Confirm your identity</h1>
{{if .Error}}<p role="alert">{{.Error}}</p>{{end}}
<form method="post">
<input type="hidden" name="session" value="{{.Session}}">
{{if eq .Type "m.login.password"}}
<p>Enter the password of {{.User}}.</p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
{{else if eq .Type "m.login.registration_token"}}
<p><label>Registration token <input name="token" required></label></p>
{{else}}
<p>Press continue to carry on.</p>
{{end}}
<p><button type="submit">Continue</button></p>
</form>
{{end}}
</body></html>
`))

type authPageData struct {
	Type, Session, User, Error string
	Done                       bool
}

// MountFallbackPages adds the HTML pages to the client-API's router.
func (s *Accounts) MountFallbackPages(mux chi.Router) {
	mux.Get(LoginFallbackPath, s.loginFallback)
	for _, prefix := range httpapi.ClientPrefixes {
		mux.Get(prefix+"/auth/{authType}/fallback/web", s.authFallback)
		mux.Post(prefix+"/auth/{authType}/fallback/web", s.authFallback)
	}
}

func writeHTML(w http.ResponseWriter, status int, t *template.Template, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// The pages are meant to be framed by clients (onAuthDone), so no
	// X-Frame-Options; nothing else may be loaded or posted elsewhere.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; style-src 'unsafe-inline'")
	w.WriteHeader(status)
	_ = t.Execute(w, data)
}

func (s *Accounts) loginFallback(w http.ResponseWriter, _ *http.Request) {
	writeHTML(w, http.StatusOK, loginFallbackPage, map[string]string{"Server": s.serverName})
}

// authFallback serves (GET) and submits (POST) one UIA stage.
func (s *Accounts) authFallback(w http.ResponseWriter, r *http.Request) {
	stage := chi.URLParam(r, "authType")
	switch stage {
	case authDummy, authPassword, authRegToken:
	default:
		http.Error(w, "Unknown authentication type", http.StatusNotFound)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "Bad form", http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	data := authPageData{Type: stage, Session: r.Form.Get("session")}
	sess, err := s.accounts.GetUIASession(ctx, data.Session, uiaSessionMaxAge)
	if errors.Is(err, store.ErrNotFound) {
		http.Error(w, "Unknown or expired session", http.StatusBadRequest)
		return
	}
	if err != nil {
		httpapi.WriteError(s.log, w, r, err)
		return
	}
	data.User = sess.UserID
	if r.Method == http.MethodPost {
		auth := &AuthData{Type: stage, Session: sess.ID, Password: r.PostForm.Get("password"), Token: r.PostForm.Get("token")}
		err := s.uiaStage(ctx, &sess, s.uiaFlows(sess.Purpose), auth)
		var ch *httpapi.UIAChallenge
		switch {
		case err == nil:
			data.Done = true
		case errors.As(err, &ch):
			data.Error = ch.Message
		default:
			httpapi.WriteError(s.log, w, r, err)
			return
		}
	}
	writeHTML(w, http.StatusOK, authFallbackPage, data)
}
