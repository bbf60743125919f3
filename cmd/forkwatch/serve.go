package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsServer serves /metrics from forkwatch's own registry, /healthz
// (the process answers) and /readyz (every probe is attached).
type metricsServer struct {
	ln       net.Listener
	srv      *http.Server
	registry *prometheus.Registry
	ready    atomic.Bool
}

// listenMetrics binds addr at once, so a port already in use is reported
// before anything is loaded into the kernel.
func listenMetrics(addr string) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &metricsServer{ln: ln, registry: prometheus.NewRegistry()}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "probes not attached yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		// What net/http would log (a failed accept, a handler's panic),
		// with forkwatch's prefix on stderr.
		ErrorLog: log.New(os.Stderr, "forkwatch: metrics server: ", 0)}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			// Serve only fails if the listener does; /healthz then stops
			// answering and the kubelet restarts forkwatch.
			fmt.Fprintf(os.Stderr, "forkwatch: the metrics server on %s stopped: %v\n", addr, err)
		}
	}()
	return s, nil
}

func (s *metricsServer) Close() error { return s.srv.Close() }
