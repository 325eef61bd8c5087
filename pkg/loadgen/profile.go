package loadgen

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
)

// fetchProfile GETs a net/http/pprof endpoint (e.g. "profile?seconds=10",
// "allocs") and stores it under ProfileDir as name; it returns the path.
func (e *Env) fetchProfile(ctx context.Context, endpoint, name string) (string, error) {
	u := strings.TrimRight(e.Opts.PprofURL, "/") + "/debug/pprof/" + endpoint
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	res, err := e.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: HTTP %d: %s", u, res.StatusCode, data)
	}
	path := filepath.Join(e.Opts.ProfileDir, name)
	if err := writeFile(path, data); err != nil {
		return "", err
	}
	e.mu.Lock()
	e.res.Profiles[strings.TrimSuffix(name, ".pprof")] = path
	e.mu.Unlock()
	return path, nil
}
