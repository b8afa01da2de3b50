// Package service is the plumbing every allot service shares, written once:
// configuration, connections, the metrics and health HTTP server, logging
// and graceful shutdown, and the consumer every worker runs on. The
// services' own logic and their own configuration sections live beside
// them; this package knows nothing of metering or rate limits.
//
//   - Config: the runtime's sections in one typed struct, from Default,
//     then a strict YAML file, then environment variables (Load, or
//     LoadInto for a struct that embeds it), checked by Validate; Secret
//     and URL keep passwords out of every printed form, and Redacted prints
//     the whole config safely. Flags adds -config and -validate to a
//     binary.
//   - A service's own sections: it reads them from the same file with
//     LoadSection or LoadSections and hands Run an OwnedSection, which Run
//     checks before starting anything and -validate prints in the same
//     document; Config lets those sections stand (ServiceSections) and
//     refuses any other key.
//   - ConnectNATS and ConnectRedis: clients that fail fast at start with the
//     address named, then reconnect on their own.
//   - NewRegistry: a Prometheus registry of the service's own, never the
//     global one.
//   - HTTPServer: /metrics, /healthz and /readyz, with NATSCheck and
//     RedisCheck as readiness checks, which /metrics also runs at each
//     scrape as allot_dependency_up{dependency}.
//   - NewLogger: log/slog in the configured level and format.
//   - Stack: stops the parts in reverse order under the shutdown timeout.
//
// A service's main only sets up signals and calls run, which builds every
// dependency explicitly and returns errors instead of exiting:
//
//	cfg, err := service.Load(flags.ConfigPath, getenv) // then cfg.Validate()
//	log, err := service.NewLogger(cfg.Log, os.Stderr)
//	stack := service.NewStack(log)
//	defer stack.Close(shutdownCtx) // bounded by cfg.Shutdown.Timeout
//	nc, err := service.ConnectNATS(ctx, cfg.NATS, log)  // stack.Push("nats", ...)
//	rdb, err := service.ConnectRedis(ctx, cfg.Redis)    // stack.Push("redis", ...)
//	srv := service.NewHTTPServer(cfg.HTTP.Addr, service.NewRegistry(), log)
//	srv.AddCheck("nats", service.NATSCheck(nc))
//	srv.AddCheck("redis", service.RedisCheck(rdb))
//	srv.Start()                                         // stack.Push("http", srv.Shutdown)
//	// start consumers and endpoints, pushing their stops
//	stack.Push("readiness", ...)                        // SetReady(false) runs first
//	srv.SetReady(true)
//	<-ctx.Done()
//
// On shutdown the stack then runs in reverse: readiness off, so traffic
// drains; the consumers stop; the HTTP server stops; the clients close.
// The package example is the whole run.
package service
