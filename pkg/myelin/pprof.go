package myelin

import (
	"errors"
	"net/http"
	"net/http/pprof"
	"time"

	"go.uber.org/zap"
)

// startPprof serves Go's runtime profiles on debug.pprof_listen, a listener
// of its own so that profiles are never reachable through the public client
// API port. It is off unless configured; `make bench` turns it on to fetch
// CPU and allocation profiles while it loads the server.
func (p *process) startPprof() error {
	addr := p.cfg.Debug.PprofListen
	if addr == "" {
		return nil
	}
	lis, err := listen("debug.pprof_listen", addr)
	if err != nil {
		return err
	}
	// An explicit mux: importing net/http/pprof also registers on
	// http.DefaultServeMux, which no Myelin listener serves.
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Warn("pprof listener stopped", zap.Error(err))
		}
	}()
	p.pprofAddr = lis.Addr().String()
	p.cleanups = append(p.cleanups, func() { _ = srv.Close() })
	p.log.Info("pprof listener on (debug.pprof_listen)", zap.String("addr", p.pprofAddr))
	return nil
}

// PprofAddr is the address of the pprof listener, empty when it is off.
func (pr *Process) PprofAddr() string { return pr.p.pprofAddr }
