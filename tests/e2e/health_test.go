package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestHealthCLI runs `myelin health` (the container healthcheck) as an OS
// process against each process of the split shape, configured as that
// process is: every one answers /readyz and /healthz; an address where
// nothing listens fails.
func TestHealthCLI(t *testing.T) {
	s := split(t)
	s.start(t)
	t.Cleanup(func() { s.stop(t); s.dumpLogs(t) })
	health := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(myelinBinary(t), append([]string{"health"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, p := range s.procs {
		out, err := health(p.env)
		if err != nil || !strings.Contains(out, `"ready"`) {
			t.Errorf("%s: myelin health: %v: %s", p.name, err, out)
		}
		out, err = health(p.env, "-path", "/healthz")
		if err != nil || !strings.Contains(out, `"ok"`) {
			t.Errorf("%s: myelin health -path /healthz: %v: %s", p.name, err, out)
		}
	}
	if out, err := health([]string{"MYELIN_HTTP_LISTEN=" + freeAddr(t)}); err == nil {
		t.Errorf("myelin health against nothing succeeded: %s", out)
	}
}
