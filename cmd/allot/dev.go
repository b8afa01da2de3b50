package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/allot/allot/cmd/allot/devstack"
	"github.com/allot/allot/pkg/service"
)

func devCommand() command {
	return command{
		name:    "dev",
		summary: "run the whole system in one process (embedded NATS and Redis)",
		usage: `Usage: allot dev [-config allot.yaml] [-nats-addr 127.0.0.1:4222] [-http 127.0.0.1:8080]

Runs allot on one machine: an embedded NATS server with JetStream in a
temporary directory, an embedded Redis (miniredis, in memory), the USAGE,
USAGE_DEAD and NOTIFY streams, every allot service (meter, ratelimit,
registry, notifier), a mail sink on 127.0.0.1:1025 whose mail shows at
/dev/mail, and asynqmon at /asynqmon/, until Ctrl-C. Set NATS_URL or
REDIS_URL to use real servers instead of the embedded ones, and
notifier.smtp.host (or ALLOT_SMTP_HOST) to send real mail.

Examples:
  allot dev
  NATS_URL=nats://127.0.0.1:4222 REDIS_URL=redis://127.0.0.1:6379/0 allot dev
  allot dev -config allot.yaml -validate`,
		run: runDev,
	}
}

func runDev(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var sf service.Flags
	sf.Register(fs)
	natsAddr := fs.String("nats-addr", "127.0.0.1:4222", "where the embedded NATS listens; a free port is used when it is taken")
	httpAddr := fs.String("http", "127.0.0.1:8080", "where /metrics, /healthz and /readyz listen")
	storeDir := fs.String("data", "", "keep the embedded JetStream in this directory (default: a temporary one, removed at exit)")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if sf.ConfigPath == "" {
		sf.ConfigPath = env.getenv("ALLOT_CONFIG")
	}
	cfg, err := service.Load(sf.ConfigPath, env.getenv)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	if sf.Validate {
		fmt.Fprint(env.stdout, cfg.Redacted())
		fmt.Fprintln(env.stdout, "# configuration is valid")
		return nil
	}
	log, err := service.NewLogger(cfg.Log, env.stderr)
	if err != nil {
		return err
	}
	st, err := devstack.Start(ctx, devstack.Options{
		Config:        cfg,
		ExternalNATS:  env.getenv("NATS_URL") != "",
		ExternalRedis: env.getenv("REDIS_URL") != "",
		ExternalSMTP:  cfg.Notifier.SMTP.Host != service.DefaultNotifier().SMTP.Host || cfg.Notifier.SMTP.Port != service.DefaultNotifier().SMTP.Port,
		NATSAddr:      *natsAddr,
		HTTPAddr:      *httpAddr,
		StoreDir:      *storeDir,
		Log:           log,
	})
	if err != nil {
		return err
	}
	printBanner(env, st)
	<-ctx.Done()
	fmt.Fprintln(env.stderr, "allot dev: stopping")
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Shutdown.Timeout)
	defer cancel()
	if err := st.Close(closeCtx); err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	fmt.Fprintln(env.stderr, "allot dev: stopped")
	return nil
}

func printBanner(env *cliEnv, st *devstack.Stack) {
	w := env.stdout
	fmt.Fprintln(w, "allot dev is running; Ctrl-C stops it.")
	natsNote := "(embedded, JetStream in " + st.StoreDir + ")"
	if st.StoreDir == "" {
		natsNote = "(external)"
	}
	fmt.Fprintf(w, "  NATS      %s %s\n", st.NATSURL, natsNote)
	fmt.Fprintf(w, "  Redis     %s\n", st.RedisURL)
	fmt.Fprintf(w, "  HTTP      %s/metrics  %s/healthz  %s/readyz\n", st.HTTPURL, st.HTTPURL, st.HTTPURL)
	if st.SMTPAddr != "" {
		fmt.Fprintf(w, "  mail      smtp://%s, shown at %s/dev/mail\n", st.SMTPAddr, st.HTTPURL)
	}
	if st.Asynqmon {
		fmt.Fprintf(w, "  jobs      %s/asynqmon/ (asynqmon)\n", st.HTTPURL)
	}
	services := "none yet"
	if len(st.Services) > 0 {
		services = strings.Join(st.Services, ", ")
	}
	fmt.Fprintf(w, "  services  %s\n", services)
	for _, n := range st.Notes {
		fmt.Fprintf(w, "  note      %s\n", n)
	}
	if st.NATSURL != "nats://127.0.0.1:4222" && env.getenv("NATS_URL") == "" {
		fmt.Fprintf(w, "In another shell:  export NATS_URL=%s\n", st.NATSURL)
	}
	fmt.Fprintln(w, "Try:  allot publish -uid u-42 -metric photo_daily_total && allot tail -n 1")
	if f, ok := w.(*os.File); ok {
		_ = f.Sync()
	}
}
