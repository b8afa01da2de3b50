package service

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"
)

// Config is the runtime's configuration, which every allot service
// shares: connections, HTTP, logging, shutdown, the wire's subjects and
// streams, how a service registers itself, and its instance name. Its zero
// value is not useful: start from Default, or call Load.
//
// A section is a struct with yaml tags in snake_case; a field that can also
// come from the environment carries an `env:"NAME"` tag. LoadInto reads both
// by reflection, so a new section needs a struct, its defaults in Default
// and its rules in Validate, and nothing else. A service's own section
// lives beside the service, which reads it with LoadSection or
// LoadSections and checks it through an OwnedSection; Config only lets it
// stand (ServiceSections).
type Config struct {
	// NATS is the connection to the NATS servers.
	NATS NATSConfig `yaml:"nats"`
	// Redis is the connection to Redis: one node, a Cluster or Sentinel.
	Redis RedisConfig `yaml:"redis"`
	// HTTP is the server for /metrics, /healthz and /readyz.
	HTTP HTTPConfig `yaml:"http"`
	// Log chooses the log level and format.
	Log LogConfig `yaml:"log"`
	// Shutdown bounds the graceful shutdown.
	Shutdown ShutdownConfig `yaml:"shutdown"`
	// Subjects holds the NATS subject prefixes of every allot subject.
	Subjects events.Subjects `yaml:"subjects"`
	// Streams describes the JetStream streams for usage events and dead
	// letters.
	Streams events.StreamConfig `yaml:"streams"`
	// Registry is the registry section as every service reads it: how it
	// registers itself (the registry service reads the whole section).
	Registry RegistryView `yaml:"registry"`
	// Owned are the sections the services own, which Config lets stand.
	Owned ServiceSections `yaml:",inline"`
	// Instance names this process among the replicas of a service, in logs,
	// the registry and metrics. Defaults to the hostname (the pod name in
	// Kubernetes).
	Instance string `yaml:"instance" env:"ALLOT_INSTANCE"`
}

// ServiceSections are the top-level sections of allot.yaml that services
// own and decode themselves, each beside its service: the metrics and
// grants (pkg/usage, read by the meter, the rate limiter and the
// notifier), and the meter, ratelimit, notifier and auth sections. The
// whole-file load lets them stand without looking inside, so that any
// other key is still refused as a typo, and Redacted prints a note in
// their place.
type ServiceSections struct {
	Metrics   Section `yaml:"metrics,omitempty"`
	Grants    Section `yaml:"grants,omitempty"`
	Meter     Section `yaml:"meter,omitempty"`
	RateLimit Section `yaml:"ratelimit,omitempty"`
	Notifier  Section `yaml:"notifier,omitempty"`
	Auth      Section `yaml:"auth,omitempty"`
}

// NATSConfig is the connection to the NATS servers. At most one of
// user/password, token and creds_file authenticates.
type NATSConfig struct {
	// URL is one server URL or a comma-separated list (nats, tls, ws or wss
	// scheme). Default nats://127.0.0.1:4222.
	URL URL `yaml:"url" env:"NATS_URL"`
	// Name is the client name the server shows in its connection list,
	// such as "allot-meter". Empty: none.
	Name string `yaml:"name"`
	// User is the user name for user/password authentication.
	User string `yaml:"user" env:"NATS_USER"`
	// Password goes with User.
	Password Secret `yaml:"password" env:"NATS_PASSWORD"`
	// Token is an authentication token.
	Token Secret `yaml:"token" env:"NATS_TOKEN"`
	// CredsFile is the path of a .creds file (JWT and NKey seed).
	CredsFile string `yaml:"creds_file" env:"NATS_CREDS"`
	// Key is an allot API key, where NATS runs allot's auth: sent as the
	// token, with inboxes under the key's own prefix (events.KeyOptions).
	Key Secret `yaml:"key" env:"ALLOT_KEY"`
	// ConnectTimeout bounds each attempt to connect to one server.
	// Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ReconnectWait is the pause between reconnect attempts to the same
	// server. The client reconnects forever. Default 2s.
	ReconnectWait time.Duration `yaml:"reconnect_wait"`
	// RequestTimeout bounds a request/reply round trip made by a service.
	// Default 2s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// RedisConfig is the connection to Redis. Exactly one of url and addrs
// says where: url for a single node, addrs for several nodes (Redis
// Cluster) or, with master_name, for the Sentinels.
type RedisConfig struct {
	// URL is a single node, redis://[user:password@]host:port/db or
	// rediss:// for TLS; query options such as ?pool_timeout=1s are taken
	// too, but the timeouts and pool size below win. Load clears the
	// default when addrs is set. Default redis://127.0.0.1:6379/0.
	URL URL `yaml:"url" env:"REDIS_URL"`
	// Addrs lists host:port addresses: several make a Redis Cluster client,
	// one a single-node client; with MasterName they are the Sentinels.
	Addrs []string `yaml:"addrs" env:"REDIS_ADDRS"`
	// MasterName, when set, makes a Sentinel (failover) client for this
	// master, found through the Sentinels in Addrs.
	MasterName string `yaml:"master_name" env:"REDIS_MASTER_NAME"`
	// Password authenticates to the Redis nodes; when set it replaces a
	// password carried in URL.
	Password Secret `yaml:"password" env:"REDIS_PASSWORD"`
	// DB is the database selected with addrs (single node or Sentinel).
	// With url the database is the URL's path; a Cluster has only 0.
	DB int `yaml:"db"`
	// DialTimeout bounds opening one connection. Default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ReadTimeout bounds reading one reply. Default 3s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing one command. Default 3s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// PoolSize is the number of connections per node; 0 keeps go-redis's
	// default (10 per CPU).
	PoolSize int `yaml:"pool_size"`
	// KeyPrefix starts every key allot writes, so several deployments can
	// share one Redis. Default "allot:". No braces: those are hash tags.
	KeyPrefix string `yaml:"key_prefix"`
}

// HTTPConfig is the HTTP server for metrics and health.
type HTTPConfig struct {
	// Addr is the host:port to listen on; ":0" picks a free port.
	// Default ":8080".
	Addr string `yaml:"addr" env:"ALLOT_HTTP_ADDR"`
}

// LogConfig chooses how the service logs.
type LogConfig struct {
	// Level is the lowest level logged: debug, info, warn or error.
	// Default info.
	Level string `yaml:"level" env:"ALLOT_LOG_LEVEL"`
	// Format is text (logfmt-like, for people) or json (for collectors).
	// Default text.
	Format string `yaml:"format" env:"ALLOT_LOG_FORMAT"`
}

// ShutdownConfig bounds the graceful shutdown.
type ShutdownConfig struct {
	// Timeout bounds the whole shutdown, after which what has not stopped is
	// abandoned. Keep it below Kubernetes' terminationGracePeriodSeconds.
	// Default 25s.
	Timeout time.Duration `yaml:"timeout" env:"ALLOT_SHUTDOWN_TIMEOUT"`
}

// defaultRedisURL is the Redis a laptop or CI runs.
const defaultRedisURL = "redis://127.0.0.1:6379/0"

// Default returns the configuration used where neither the file nor the
// environment says otherwise. Instance is the hostname, or empty if the
// system cannot tell it (Validate then asks for ALLOT_INSTANCE).
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		NATS: NATSConfig{
			URL:            "nats://127.0.0.1:4222",
			ConnectTimeout: 5 * time.Second,
			ReconnectWait:  2 * time.Second,
			RequestTimeout: 2 * time.Second,
		},
		Redis: RedisConfig{
			URL:          defaultRedisURL,
			DialTimeout:  5 * time.Second,
			ReadTimeout:  3 * time.Second,
			WriteTimeout: 3 * time.Second,
			KeyPrefix:    "allot:",
		},
		HTTP:     HTTPConfig{Addr: ":8080"},
		Log:      LogConfig{Level: "info", Format: "text"},
		Shutdown: ShutdownConfig{Timeout: 25 * time.Second},
		Subjects: events.DefaultSubjects(),
		Streams:  events.DefaultStreamConfig(),
		Registry: RegistryView{DefaultRegistration()},
		Instance: host,
	}
}

// Load returns Default, overlaid by the YAML file at path (none if path is
// empty), overlaid by the environment read through getenv (os.Getenv in
// main, a map in tests). It does not validate: call Validate.
//
// Setting redis.addrs while redis.url still has its default clears the
// url, so a Cluster needs no `url: ""`.
func Load(path string, getenv func(string) string) (Config, error) {
	cfg := Default()
	if err := LoadInto(&cfg, path, getenv); err != nil {
		return Config{}, err
	}
	if len(cfg.Redis.Addrs) > 0 && cfg.Redis.URL == defaultRedisURL {
		cfg.Redis.URL = ""
	}
	return cfg, nil
}

// Validate checks every rule and returns all the broken ones joined, each
// naming the field, such as "service: shutdown.timeout: must be > 0".
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, c.NATS.validate()...)
	errs = append(errs, c.Redis.validate()...)
	errs = append(errs, c.HTTP.validate()...)
	errs = append(errs, c.Log.validate()...)
	errs = append(errs, c.Shutdown.validate()...)
	errs = append(errs, c.Registry.validate()...)
	for _, err := range []error{c.Subjects.Validate(), c.Streams.Validate()} {
		if err != nil {
			errs = append(errs, fmt.Errorf("service: %w", err))
		}
	}
	switch {
	case c.Instance == "":
		errs = append(errs, fieldError("instance", "must not be empty (set ALLOT_INSTANCE)"))
	case strings.ContainsAny(c.Instance, " \t\r\n*>"):
		errs = append(errs, fieldError("instance", "must not contain whitespace, '*' or '>'"))
	}
	return errors.Join(errs...)
}

// Redacted returns the whole configuration as YAML with every secret and
// URL password masked, for -validate and for a startup log line. sections
// are the owned sections as their services print them (OwnedSection): each
// top-level key of theirs takes the place of c's note or view of it, or
// comes after c's keys, so the whole prints as one document.
func (c Config) Redacted(sections ...string) string {
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return fmt.Sprintf("service: cannot print config: %v", err)
	}
	for _, s := range sections {
		var own yaml.Node
		if err := yaml.Unmarshal([]byte(s), &own); err != nil {
			return fmt.Sprintf("service: cannot print config: %v", err)
		}
		if len(own.Content) == 1 && own.Content[0].Kind == yaml.MappingNode {
			mergeKeys(&doc, own.Content[0])
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Sprintf("service: cannot print config: %v", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Sprintf("service: cannot print config: %v", err)
	}
	return buf.String()
}

// mergeKeys puts every key of the mapping from into the mapping into: in
// the place of the same key, or at the end.
func mergeKeys(into, from *yaml.Node) {
	for i := 0; i+1 < len(from.Content); i += 2 {
		k, v := from.Content[i], from.Content[i+1]
		replaced := false
		for j := 0; j+1 < len(into.Content); j += 2 {
			if into.Content[j].Value == k.Value {
				into.Content[j+1], replaced = v, true
				break
			}
		}
		if !replaced {
			into.Content = append(into.Content, k, v)
		}
	}
}

// fieldError reports a broken rule of one field, named by its YAML path.
func fieldError(field, format string, args ...any) error {
	return fmt.Errorf("service: %s: %s", field, fmt.Sprintf(format, args...))
}

func (c NATSConfig) validate() []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldError("nats"+field, format, args...))
	}
	urls := splitList(c.URL.Reveal())
	if len(urls) == 0 {
		add(".url", "must not be empty")
	}
	var ws, plain bool
	for _, s := range urls {
		if !strings.Contains(s, "://") {
			add(".url", "%q is not a URL such as nats://host:4222", redactURL(s))
			continue
		}
		u, err := url.Parse(s)
		if err != nil {
			add(".url", "%s", urlError(err))
			continue
		}
		switch u.Scheme {
		case "nats", "tls":
			plain = true
		case "ws", "wss":
			ws = true
		default:
			add(".url", "scheme must be nats, tls, ws or wss, got %q", u.Scheme)
			continue
		}
		if u.Hostname() == "" {
			add(".url", "%q has no host", redactURL(s))
		}
	}
	if ws && plain {
		add(".url", "cannot mix ws or wss servers with nats or tls ones")
	}
	if c.User != "" && c.Password == "" {
		add(".password", "must be set with user")
	}
	if c.User == "" && c.Password != "" {
		add(".user", "must be set with password")
	}
	methods := 0
	for _, set := range []bool{c.User != "" || c.Password != "", c.Token != "", c.CredsFile != "", c.Key != ""} {
		if set {
			methods++
		}
	}
	if methods > 1 {
		add("", "user/password, token, creds_file and key are mutually exclusive")
	}
	if c.Key != "" {
		if _, err := events.KeyOptions(c.Key.Reveal()); err != nil {
			add(".key", "is not an API key (want <8-character id>.<secret>)")
		}
	}
	errs = positive(errs, "nats.connect_timeout", c.ConnectTimeout)
	errs = positive(errs, "nats.reconnect_wait", c.ReconnectWait)
	errs = positive(errs, "nats.request_timeout", c.RequestTimeout)
	return errs
}

func (c RedisConfig) validate() []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldError("redis"+field, format, args...))
	}
	switch {
	case c.URL != "" && len(c.Addrs) > 0:
		add("", "url and addrs are mutually exclusive")
	case c.URL == "" && len(c.Addrs) == 0:
		add("", "one of url or addrs is required")
	}
	if c.URL != "" {
		if u, err := url.Parse(c.URL.Reveal()); err != nil {
			add(".url", "%s", urlError(err))
		} else if u.Scheme != "redis" && u.Scheme != "rediss" {
			add(".url", "scheme must be redis or rediss, got %q", u.Scheme)
		} else if _, err := redis.ParseURL(c.URL.Reveal()); err != nil {
			add(".url", "%s", strings.TrimPrefix(urlError(err), "redis: "))
		}
		if c.DB != 0 {
			add(".db", "must be 0 with url: select the database in the url path")
		}
		if c.MasterName != "" {
			add(".master_name", "needs addrs (the Sentinels), not url")
		}
	}
	for i, a := range c.Addrs {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			add(fmt.Sprintf(".addrs[%d]", i), "must be host:port, got %q", a)
		}
	}
	if c.DB < 0 {
		add(".db", "must be >= 0")
	} else if c.DB != 0 && len(c.Addrs) > 1 && c.MasterName == "" {
		add(".db", "must be 0 with Redis Cluster")
	}
	errs = positive(errs, "redis.dial_timeout", c.DialTimeout)
	errs = positive(errs, "redis.read_timeout", c.ReadTimeout)
	errs = positive(errs, "redis.write_timeout", c.WriteTimeout)
	if c.PoolSize < 0 {
		add(".pool_size", "must be >= 0")
	}
	if strings.ContainsAny(c.KeyPrefix, "{} \t\r\n") {
		add(".key_prefix", "must not contain braces or whitespace")
	}
	return errs
}

func (c HTTPConfig) validate() []error {
	if _, port, err := net.SplitHostPort(c.Addr); err != nil || port == "" {
		return []error{fieldError("http.addr", "must be host:port or :port, got %q", c.Addr)}
	}
	return nil
}

func (c LogConfig) validate() []error {
	var errs []error
	switch c.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fieldError("log.level", "must be one of debug, info, warn, error, got %q", c.Level))
	}
	switch c.Format {
	case "text", "json":
	default:
		errs = append(errs, fieldError("log.format", "must be one of text, json, got %q", c.Format))
	}
	return errs
}

func (c ShutdownConfig) validate() []error {
	return positive(nil, "shutdown.timeout", c.Timeout)
}

// positive appends an error to errs unless d > 0.
func positive(errs []error, field string, d time.Duration) []error {
	if d <= 0 {
		return append(errs, fieldError(field, "must be > 0, got %s", d))
	}
	return errs
}
