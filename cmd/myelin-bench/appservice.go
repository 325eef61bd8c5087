package main

import "github.com/myelin-chat/myelin/pkg/loadgen"

// appserviceSetup registers the load generator's appservice receiver (the
// appservice scenario, loadgen.NewAppserviceTarget) and returns the
// server's settings (MYELIN_* variables) and the scenario's target (the
// caller sets its AdminURL once the server listens). backoff_max is 2 s so
// that the backlog phase's receiver, once it recovers, is tried again
// within 2 s (the drain rate is measured from the first successful
// transaction on, so the wait is not counted either way).
func appserviceSetup(dir string) ([]string, *loadgen.AppserviceTarget, func(), error) {
	t, path, err := loadgen.NewAppserviceTarget(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	env := []string{
		"MYELIN_APPSERVICE_CONFIG_FILES=" + path,
		"MYELIN_APPSERVICE_ADMIN_TOKEN=" + t.AdminToken,
		"MYELIN_APPSERVICE_BACKOFF_MAX=2s",
	}
	return env, t, func() { _ = t.Listener.Close() }, nil
}
