package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/allot/allot/cmd/allot/devstack"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth"
	"github.com/allot/allot/services/notifier"
	"github.com/allot/allot/services/ratelimit"
	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"
)

func devCommand() command {
	return command{
		name:    "dev",
		summary: "run the whole system in one process (embedded NATS and Redis)",
		usage: `Usage: allot dev [-config allot.yaml] [-nats-addr 127.0.0.1:4222] [-http 127.0.0.1:8080] [-smtp 127.0.0.1:1025]

Runs allot on one machine: an embedded NATS server with JetStream in a
temporary directory, an embedded Redis (miniredis, in memory), the USAGE,
USAGE_DEAD and NOTIFY streams, every allot service (meter, ratelimit,
registry, notifier), a mail sink on 127.0.0.1:1025 whose mail shows at
/dev/mail, and asynqmon at /asynqmon/, until Ctrl-C. Set NATS_URL or
REDIS_URL to use real servers instead of the embedded ones, and
notifier.smtp.host (or ALLOT_SMTP_HOST) to send real mail. When a port
is taken, a free one is used and the banner says so. Without -config (or
ALLOT_CONFIG) the defaults run, plus one example rate-limited service,
"upload" (100 calls an hour), to try 'allot check' on. Ctrl-C stops
everything cleanly and exits 0.

Examples:
  allot dev
  NATS_URL=nats://127.0.0.1:4222 REDIS_URL=redis://127.0.0.1:6379/0 allot dev
  allot dev -config allot.yaml -validate`,
		run: runDev,
	}
}

// The example rate-limited service allot dev declares when it runs
// without a configuration file, so "allot check -service upload" works on
// a laptop as the README shows.
const (
	devServiceName     = "upload"
	devServiceLimit    = 100
	devServiceInterval = time.Hour
)

// devHTTPAddr is where allot dev serves HTTP when neither -http,
// http.addr nor ALLOT_HTTP_ADDR says: the services' default (":8080", every
// interface) narrowed to this machine.
const devHTTPAddr = "127.0.0.1:8080"

func runDev(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var sf service.Flags
	sf.Register(fs)
	natsAddr := fs.String("nats-addr", "127.0.0.1:4222", "where the embedded NATS listens; a free port is used when it is taken")
	httpAddr := fs.String("http", "", "where /metrics, /healthz and /readyz listen (default: ALLOT_HTTP_ADDR or http.addr when set, else "+devHTTPAddr+")")
	grpcAddr := fs.String("grpc", "", "where the rate limiter's Envoy RLS front (gRPC) listens (default: ratelimit.grpc.listen when set, else 127.0.0.1:8081); a free port is used when it is taken")
	smtpAddr := fs.String("smtp", "127.0.0.1:1025", "where the mail sink listens, unless notifier.smtp names a real server")
	storeDir := fs.String("data", "", "keep the embedded JetStream in this directory (default: a temporary one, removed at exit)")
	noAuth := fs.Bool("no-auth", false, "run the embedded NATS open, as before access control: any client may publish and ask anything (never outside a laptop)")
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
	sections, err := devstack.LoadSections(cfg, sf.ConfigPath, env.getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	var notes []string
	if sf.ConfigPath == "" && len(sections.RateLimit.Services) == 0 {
		limit := int64(devServiceLimit)
		sections.RateLimit.Services = map[string]ratelimit.Service{
			devServiceName: {Limit: &limit, Interval: devServiceInterval},
		}
		notes = append(notes, fmt.Sprintf("ratelimit: no config file, so the example service %s (%d calls per %s) is declared", devServiceName, devServiceLimit, devServiceInterval))
	}
	external := env.getenv("NATS_URL") != ""
	var authCfg *auth.Config
	if !*noAuth && !external {
		a, authNotes, err := devAuthConfig(sf.ConfigPath, env.getenv)
		if err != nil {
			return fmt.Errorf("invalid configuration: %w", err)
		}
		authCfg, notes = &a, append(notes, authNotes...)
	}
	if sf.Validate {
		own, err := sections.Redacted()
		if err != nil {
			return err
		}
		parts := []string{own}
		if authCfg != nil {
			// The auth section as the auth service sees it, secrets masked
			// (the issuer and system password made up for this run, unless
			// the file or the environment set them).
			b, err := yaml.Marshal(map[string]auth.Config{"auth": *authCfg})
			if err != nil {
				return err
			}
			parts = append(parts, string(b))
		}
		fmt.Fprint(env.stdout, cfg.Redacted(parts...))
		fmt.Fprintln(env.stdout, "# configuration is valid")
		return nil
	}
	addr := *httpAddr
	if addr == "" {
		// The file or ALLOT_HTTP_ADDR, when either moved it from the
		// services' default; that default itself means this machine here.
		addr = cfg.HTTP.Addr
		if addr == service.Default().HTTP.Addr {
			addr = devHTTPAddr
		}
	}
	log, err := service.NewLogger(cfg.Log, env.stderr)
	if err != nil {
		return err
	}
	st, err := devstack.Start(ctx, devstack.Options{
		Config:        cfg,
		Sections:      &sections,
		ExternalNATS:  external,
		Auth:          authCfg,
		ExternalRedis: env.getenv("REDIS_URL") != "",
		ExternalSMTP:  sections.Notifier.SMTP.Host != notifier.DefaultSettings().SMTP.Host || sections.Notifier.SMTP.Port != notifier.DefaultSettings().SMTP.Port,
		NATSAddr:      *natsAddr,
		HTTPAddr:      addr,
		SMTPAddr:      *smtpAddr,
		GRPCAddr:      *grpcAddr,
		StoreDir:      *storeDir,
		Log:           log,
	})
	if err != nil {
		return err
	}
	printBanner(env, st, notes)
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

// printBanner says where everything runs, and how another shell reaches
// it: the export line is always printed, since without NATS_URL the other
// commands try nats://127.0.0.1:4222, which may be another NATS.
func printBanner(env *cliEnv, st *devstack.Stack, notes []string) {
	w := env.stdout
	fmt.Fprintln(w, "allot dev is running; Ctrl-C stops it.")
	natsNote := "(embedded, JetStream in " + st.StoreDir + ")"
	if st.StoreDir == "" {
		natsNote = "(external)"
	}
	fmt.Fprintf(w, "  NATS      %s %s\n", st.NATSURL, natsNote)
	fmt.Fprintf(w, "  Redis     %s\n", st.RedisURL)
	fmt.Fprintf(w, "  HTTP      %s/metrics  %s/healthz  %s/readyz\n", st.HTTPURL, st.HTTPURL, st.HTTPURL)
	fmt.Fprintf(w, "  grpc      %s (Envoy RLS)\n", st.GRPCAddr)
	if st.SMTPAddr != "" {
		fmt.Fprintf(w, "  mail      smtp://%s, shown at %s/dev/mail\n", st.SMTPAddr, st.HTTPURL)
	}
	if st.Asynqmon {
		fmt.Fprintf(w, "  jobs      %s/asynqmon/ (asynqmon)\n", st.HTTPURL)
	}
	if st.AdminKey != "" {
		fmt.Fprintf(w, "  auth      every connection needs an API key (-no-auth runs open); keys for this run:\n")
		fmt.Fprintf(w, "admin key: %s\n", st.AdminKey)
		fmt.Fprintf(w, "app key: %s\n", st.AppKey)
	}
	services := "none yet"
	if len(st.Services) > 0 {
		services = strings.Join(st.Services, ", ")
	}
	fmt.Fprintf(w, "  services  %s\n", services)
	for _, n := range append(st.Notes, notes...) {
		fmt.Fprintf(w, "  note      %s\n", n)
	}
	switch {
	case st.StoreDir != "" && st.AdminKey != "":
		fmt.Fprintf(w, "In another shell:  export NATS_URL=%s ALLOT_KEY=%s\n", st.NATSURL, st.AdminKey)
	case st.StoreDir != "":
		fmt.Fprintf(w, "In another shell:  export NATS_URL=%s\n", st.NATSURL)
	default:
		fmt.Fprintln(w, "In another shell:  export the same NATS_URL")
	}
	self := env.selfName()
	fmt.Fprintf(w, "Try:  %s publish -uid u-42 -metric photo_daily_total && %s tail -n 1\n", self, self)
	if f, ok := w.(*os.File); ok {
		_ = f.Sync()
	}
}

// devAuthConfig is the auth section for allot dev: the config file's (and
// the environment's) over defaults with a random issuer and system
// password for this run.
func devAuthConfig(path string, getenv func(string) string) (auth.Config, []string, error) {
	base, err := auth.DefaultConfig()
	if err != nil {
		return auth.Config{}, nil, err
	}
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		return auth.Config{}, nil, err
	}
	seed, _ := issuer.Seed()
	password, err := nkeys.CreateUser() // its public key: 56 random characters, as good as any password
	if err != nil {
		return auth.Config{}, nil, err
	}
	pw, _ := password.PublicKey()
	base.IssuerSeed, base.SysPassword = service.Secret(seed), service.Secret(pw)
	cfg, err := auth.LoadConfigOver(base, path, getenv)
	if err != nil {
		return auth.Config{}, nil, err
	}
	var notes []string
	if cfg.IssuerSeed == base.IssuerSeed {
		notes = append(notes, "auth: auth.issuer_seed is not set; using a random issuer for this run")
	}
	return cfg, notes, nil
}
