package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/allot/allot/pkg/service"
)

// envMap returns a getenv reading from m.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// fixture is the path of a file in testdata.
func fixture(name string) string { return filepath.Join("testdata", name) }

func TestLoadDefaults(t *testing.T) {
	for _, path := range []string{"", fixture("empty.yaml")} {
		t.Run(fmt.Sprintf("path=%q", path), func(t *testing.T) {
			got, err := service.Load(path, envMap(nil))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if diff := cmp.Diff(service.Default(), got); diff != "" {
				t.Errorf("Load (-want +got):\n%s", diff)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate(defaults) = %v, want nil", err)
			}
		})
	}
}

func TestLoadFileThenEnv(t *testing.T) {
	base := service.Default()
	tests := []struct {
		name string
		path string
		env  map[string]string
		want func(c *service.Config)
	}{
		{
			name: "file",
			path: fixture("good.yaml"),
			want: func(c *service.Config) {
				c.NATS = service.NATSConfig{
					URL:            "nats://n1.example:4222,nats://n2.example:4222",
					Name:           "allot-meter",
					User:           "meter",
					Password:       "s3cret-nats",
					ConnectTimeout: 3 * time.Second,
					ReconnectWait:  500 * time.Millisecond,
					RequestTimeout: time.Second,
				}
				c.Redis = service.RedisConfig{
					URL:          "rediss://:s3cret-redis@redis.example:6380/2",
					DialTimeout:  2 * time.Second,
					ReadTimeout:  time.Second,
					WriteTimeout: 1500 * time.Millisecond,
					PoolSize:     20,
					KeyPrefix:    "allot-test:",
				}
				c.HTTP.Addr = "127.0.0.1:9090"
				c.Log = service.LogConfig{Level: "debug", Format: "json"}
				c.Shutdown.Timeout = 10 * time.Second
				c.Instance = "meter-0"
			},
		},
		{
			name: "env over file",
			path: fixture("good.yaml"),
			env: map[string]string{
				"NATS_URL":               "nats://env:4222",
				"NATS_PASSWORD":          "from-env",
				"REDIS_URL":              "redis://env:6379/1",
				"REDIS_PASSWORD":         "redis-from-env",
				"ALLOT_HTTP_ADDR":        ":9999",
				"ALLOT_LOG_LEVEL":        "warn",
				"ALLOT_LOG_FORMAT":       "text",
				"ALLOT_SHUTDOWN_TIMEOUT": "1m30s",
				"ALLOT_INSTANCE":         "meter-7",
				"UNRELATED":              "ignored",
			},
			want: func(c *service.Config) {
				c.NATS = service.NATSConfig{
					URL:            "nats://env:4222",
					Name:           "allot-meter",
					User:           "meter",
					Password:       "from-env",
					ConnectTimeout: 3 * time.Second,
					ReconnectWait:  500 * time.Millisecond,
					RequestTimeout: time.Second,
				}
				c.Redis = service.RedisConfig{
					URL:          "redis://env:6379/1",
					Password:     "redis-from-env",
					DialTimeout:  2 * time.Second,
					ReadTimeout:  time.Second,
					WriteTimeout: 1500 * time.Millisecond,
					PoolSize:     20,
					KeyPrefix:    "allot-test:",
				}
				c.HTTP.Addr = ":9999"
				c.Log = service.LogConfig{Level: "warn", Format: "text"}
				c.Shutdown.Timeout = 90 * time.Second
				c.Instance = "meter-7"
			},
		},
		{
			name: "env without file",
			env:  map[string]string{"REDIS_ADDRS": " r1:6379, r2:6379 ,", "REDIS_MASTER_NAME": "main"},
			want: func(c *service.Config) {
				c.Redis.URL = ""
				c.Redis.Addrs = []string{"r1:6379", "r2:6379"}
				c.Redis.MasterName = "main"
			},
		},
		{
			name: "cluster addrs clear the default url",
			path: fixture("cluster.yaml"),
			want: func(c *service.Config) {
				c.Redis.URL = ""
				c.Redis.Addrs = []string{"r1.example:6379", "r2.example:6379", "r3.example:6379"}
				c.Redis.Password = "s3cret-redis"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := base
			tt.want(&want)
			got, err := service.Load(tt.path, envMap(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Load (-want +got):\n%s", diff)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

// TestBadConfig loads each bad fixture and checks that the error, from Load
// or else from Validate, names the field (or the file and line) and the rule.
func TestBadConfig(t *testing.T) {
	tests := []struct {
		file string
		want []string // each must appear in the error
	}{
		{"unknown_field.yaml", []string{"unknown_field.yaml", "line 3", "nats.conect_timeout: unknown field"}},
		{"unknown_section.yaml", []string{"line 3", "metric: unknown field"}},
		{"duplicate_field.yaml", []string{"line 3", `log.level: mapping key "level" already defined at line 2`}},
		{"wrong_type_duration.yaml", []string{"line 2", "nats.connect_timeout: cannot unmarshal", "time.Duration"}},
		{"wrong_type_int.yaml", []string{"line 2", "redis.pool_size: cannot unmarshal !!seq into int"}},
		{"wrong_type_nested_map.yaml", []string{"line 3", "redis.addrs: cannot unmarshal !!map into []string"}},
		{"wrong_type_long_value.yaml", []string{"line 1", "nats.request_timeout: cannot unmarshal !!str `eventua...` into time.Duration"}},
		{"wrong_type_section.yaml", []string{"line 1", "http: cannot unmarshal", "HTTPConfig"}},
		{"wrong_type_flow.yaml", []string{"line 1", "redis.read_timeout: cannot unmarshal"}},
		{"malformed.yaml", []string{"malformed.yaml", "line 2: did not find expected key"}},
		{"two_documents.yaml", []string{"two_documents.yaml", "line 3", "second YAML document"}},
		{"missing.yaml", []string{"missing.yaml", "no such file"}},
		{"bad_nats_scheme.yaml", []string{"nats.url: scheme must be nats, tls, ws or wss"}},
		{"bad_redis_scheme.yaml", []string{"redis.url: scheme must be redis or rediss"}},
		{"bad_redis_db_path.yaml", []string{"redis.url: invalid database number"}},
		{"negative_timeout.yaml", []string{"shutdown.timeout: must be > 0"}},
		{"zero_timeout.yaml", []string{"redis.dial_timeout: must be > 0"}},
		{"bad_log_level.yaml", []string{"log.level: must be one of debug, info, warn, error"}},
		{"bad_log_format.yaml", []string{"log.format: must be one of text, json"}},
		{"url_and_addrs.yaml", []string{"redis: url and addrs are mutually exclusive"}},
		{"bad_addr.yaml", []string{"redis.addrs[0]: must be host:port"}},
		{"cluster_db.yaml", []string{"redis.db: must be 0 with Redis Cluster"}},
		{"nats_auth_conflict.yaml", []string{"nats: user/password, token, creds_file and key are mutually exclusive"}},
		{"nats_bad_key.yaml", []string{"nats.key: is not an API key"}},
		{"nats_user_without_password.yaml", []string{"nats.password: must be set with user"}},
		{"bad_http_addr.yaml", []string{"http.addr: must be host:port"}},
		{"bad_key_prefix.yaml", []string{"redis.key_prefix: must not contain braces"}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".yaml"), func(t *testing.T) {
			cfg, err := service.Load(fixture(tt.file), envMap(nil))
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil {
				t.Fatal("Load and Validate succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "service: ") {
				t.Errorf("error %q does not start with \"service: \"", err)
			}
		})
	}
}

func TestValidateJoinsEveryError(t *testing.T) {
	cfg := service.Default()
	cfg.NATS.URL = "http://x:1"
	cfg.Shutdown.Timeout = 0
	cfg.Log.Level = "loud"
	cfg.Instance = ""
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate = nil, want errors")
	}
	got := strings.Split(err.Error(), "\n")
	want := []string{
		`service: nats.url: scheme must be nats, tls, ws or wss, got "http"`,
		`service: log.level: must be one of debug, info, warn, error, got "loud"`,
		`service: shutdown.timeout: must be > 0, got 0s`,
		`service: instance: must not be empty (set ALLOT_INSTANCE)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Validate lines (-want +got):\n%s", diff)
	}
}

func TestValidateNATSURLs(t *testing.T) {
	tests := []struct {
		url     service.URL
		wantErr string // "" means valid
	}{
		{"nats://127.0.0.1:4222", ""},
		{"tls://a:4222, nats://b:4222", ""},
		{"ws://a:8080,wss://b:443", ""},
		{"nats://user:pw@a:4222", ""},
		{"", "nats.url: must not be empty"},
		{"127.0.0.1:4222", "is not a URL such as nats://host:4222"},
		{"nats://a:4222,ws://b:8080", "cannot mix ws or wss"},
		{"nats://:4222", "has no host"},
		{"nats://a:port", "invalid port"},
	}
	for _, tt := range tests {
		t.Run(string(tt.url), func(t *testing.T) {
			cfg := service.Default()
			cfg.Instance = "test"
			cfg.NATS.URL = tt.url
			err := cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"duration", map[string]string{"ALLOT_SHUTDOWN_TIMEOUT": "25"}, `service: env ALLOT_SHUTDOWN_TIMEOUT: cannot parse "25" as a duration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := service.Load("", envMap(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// serviceConfig is how a service can grow the shared config with its own
// section: LoadInto fills both, file and environment alike.
type serviceConfig struct {
	service.Config `yaml:",inline"`
	Extra          extraConfig  `yaml:"extra"`
	Ptr            *extraConfig `yaml:"ptr"`
	hidden         string
}

type extraConfig struct {
	On     bool          `yaml:"on" env:"X_ON"`
	Count  int32         `yaml:"count" env:"X_COUNT"`
	Size   uint16        `yaml:"size" env:"X_SIZE"`
	Ratio  float64       `yaml:"ratio" env:"X_RATIO"`
	Every  time.Duration `yaml:"every" env:"X_EVERY"`
	Names  []string      `yaml:"names" env:"X_NAMES"`
	Key    service.Secret
	Labels map[string]string `yaml:"labels"`
}

func TestLoadIntoWalksAnyStruct(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "svc.yaml")
	writeFile(t, path, "log:\n  level: debug\nextra:\n  count: 3\n  labels: {a: b}\n")

	got := serviceConfig{Config: service.Default(), Ptr: &extraConfig{}}
	env := map[string]string{
		"ALLOT_LOG_FORMAT": "json",
		"X_ON":             "true",
		"X_SIZE":           "512",
		"X_RATIO":          "0.25",
		"X_EVERY":          "250ms",
		"X_NAMES":          "a,b",
	}
	if err := service.LoadInto(&got, path, envMap(env)); err != nil {
		t.Fatalf("LoadInto: %v", err)
	}
	wantExtra := extraConfig{
		On: true, Count: 3, Size: 512, Ratio: 0.25, Every: 250 * time.Millisecond,
		Names: []string{"a", "b"}, Labels: map[string]string{"a": "b"},
	}
	fromEnv := wantExtra // the pointed-to section got the environment only
	fromEnv.Count, fromEnv.Labels = 0, nil
	want := serviceConfig{Config: service.Default(), Extra: wantExtra, Ptr: &fromEnv}
	want.Log = service.LogConfig{Level: "debug", Format: "json"}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(serviceConfig{})); diff != "" {
		t.Errorf("LoadInto (-want +got):\n%s", diff)
	}
}

func TestLoadIntoErrors(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	writeFile(t, unknown, "extra:\n  labels: {a: b}\n  nope: 1\n")
	type unsupported struct {
		C chan int `env:"X_CHAN"`
	}
	tests := []struct {
		name string
		dst  any
		path string
		env  map[string]string
		want []string
	}{
		{"not a pointer", serviceConfig{}, "", nil, []string{"service: LoadInto needs a non-nil pointer to a struct"}},
		{"nil pointer", (*serviceConfig)(nil), "", nil, []string{"non-nil pointer"}},
		{"unknown nested field", &serviceConfig{}, unknown, nil, []string{"line 3: extra.nope: unknown field"}},
		{"every bad variable", &serviceConfig{}, "", map[string]string{
			"X_ON": "maybe", "X_COUNT": "9999999999", "X_SIZE": "-1", "X_RATIO": "half", "X_EVERY": "often",
		}, []string{
			`service: env X_ON: cannot parse "maybe" as a bool`,
			`service: env X_COUNT: cannot parse "9999999999" as int32`,
			`service: env X_SIZE: cannot parse "-1" as uint16`,
			`service: env X_RATIO: cannot parse "half" as float64`,
			`service: env X_EVERY: cannot parse "often" as a duration`,
		}},
		{"unsupported type", &unsupported{}, "", map[string]string{"X_CHAN": "1"}, []string{"service: env X_CHAN: unsupported field type chan int"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := service.LoadInto(tt.dst, tt.path, envMap(tt.env))
			if err == nil {
				t.Fatal("LoadInto = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// secretConfig returns a valid config holding every kind of secret, and
// the secret values that must never print.
func secretConfig(t *testing.T) (service.Config, []string) {
	t.Helper()
	cfg := service.Default()
	cfg.NATS.URL = "nats://natsuser:natsurlpass@a:4222,nats://tokenInURL@b:4222"
	cfg.NATS.User = "meter"
	cfg.NATS.Password = "natsfieldpass"
	cfg.Redis.URL = "redis://default:redisurlpass@127.0.0.1:6379/0"
	cfg.Redis.Password = "redisfieldpass"
	cfg.Instance = "test"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	other := cfg
	other.NATS.User, other.NATS.Password, other.NATS.Token = "", "", "natstoken"
	if err := other.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return cfg, []string{"natsurlpass", "tokenInURL", "natsfieldpass", "redisurlpass", "redisfieldpass"}
}

func TestSecretsNeverPrint(t *testing.T) {
	cfg, secrets := secretConfig(t)
	tok := cfg
	tok.NATS.User, tok.NATS.Password, tok.NATS.Token = "", "", "natstoken"
	secrets = append(secrets, "natstoken")

	var slogText, slogJSON bytes.Buffer
	slog.New(slog.NewTextHandler(&slogText, nil)).Info("config", "cfg", cfg, "tok", tok, "pw", cfg.NATS.Password, "url", cfg.Redis.URL)
	slog.New(slog.NewJSONHandler(&slogJSON, nil)).Info("config", "cfg", cfg, "tok", tok, "pw", cfg.NATS.Password, "url", cfg.Redis.URL)

	yamlOut, err := yaml.Marshal([]service.Config{cfg, tok})
	if err != nil {
		t.Fatalf("yaml.Marshal: %v", err)
	}
	outputs := []struct{ name, out string }{
		{"%v", fmt.Sprintf("%v %v", cfg, tok)},
		{"%+v", fmt.Sprintf("%+v %+v", cfg, tok)},
		{"%#v", fmt.Sprintf("%#v %#v", cfg, tok)},
		{"pointers", fmt.Sprintf("%v %+v", &cfg, &tok)},
		{"%s", fmt.Sprintf("%s %s %s", cfg.NATS.Password, tok.NATS.Token, cfg.Redis.URL)},
		{"%q", fmt.Sprintf("%q %q %q", cfg.NATS.Password, tok.NATS.Token, cfg.NATS.URL)},
		{"%x", fmt.Sprintf("%x %x", cfg.NATS.Password, cfg.Redis.URL)},
		{"%10.3s", fmt.Sprintf("%10.3s", cfg.NATS.Password)},
		{"json", mustJSON(t, []service.Config{cfg, tok})},
		{"yaml", string(yamlOut)},
		{"Redacted", cfg.Redacted() + tok.Redacted()},
		{"slog text", slogText.String()},
		{"slog json", slogJSON.String()},
	}
	for _, o := range outputs {
		t.Run(o.name, func(t *testing.T) {
			for _, s := range secrets {
				if strings.Contains(o.out, s) {
					t.Errorf("output reveals %q:\n%s", s, o.out)
				}
			}
		})
	}
}

func TestRedactedYAML(t *testing.T) {
	cfg, _ := secretConfig(t)
	got := cfg.Redacted()
	for _, want := range []string{
		"password: '[redacted]'",
		"url: nats://natsuser:xxxxx@a:4222,nats://xxxxx@b:4222",
		"url: redis://default:xxxxx@127.0.0.1:6379/0",
		"connect_timeout: 5s",
		"key_prefix: 'allot:'",
		"instance: test",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Redacted() lacks %q:\n%s", want, got)
		}
	}
}

func TestSecretForms(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"String", service.Secret("pw").String(), "[redacted]"},
		{"String empty", service.Secret("").String(), ""},
		{"GoString", service.Secret("pw").GoString(), `"[redacted]"`},
		{"%v", fmt.Sprintf("%v", service.Secret("pw")), "[redacted]"},
		{"%q", fmt.Sprintf("%q", service.Secret("pw")), `"[redacted]"`},
		{"%q empty", fmt.Sprintf("%q", service.Secret("")), `""`},
		{"%#v", fmt.Sprintf("%#v", service.Secret("pw")), `"[redacted]"`},
		{"struct %+v", fmt.Sprintf("%+v", struct{ P service.Secret }{"pw"}), "{P:[redacted]}"},
		{"Reveal", service.Secret("pw").Reveal(), "pw"},
		{"json", mustJSON(t, service.Secret("pw")), `"[redacted]"`},
		{"json empty", mustJSON(t, service.Secret("")), `""`},
		{"URL Reveal", service.URL("redis://:pw@h:1/0").Reveal(), "redis://:pw@h:1/0"},
		{"URL without credentials", service.URL("nats://h:4222").String(), "nats://h:4222"},
		{"URL password", service.URL("redis://:pw@h:1/0").String(), "redis://:xxxxx@h:1/0"},
		{"URL user and password", service.URL("rediss://u:pw@h:1").String(), "rediss://u:xxxxx@h:1"},
		{"URL token as user", service.URL("nats://tok@h:4222").String(), "nats://xxxxx@h:4222"},
		{"URL list", service.URL("nats://a:pw@h1:1, nats://h2:2").String(), "nats://a:xxxxx@h1:1,nats://h2:2"},
		{"URL that does not parse", service.URL("redis://u:p w%zz@h:1").String(), "redis://xxxxx@h:1"},
		{"URL %q", fmt.Sprintf("%q", service.URL("redis://:pw@h:1")), `"redis://:xxxxx@h:1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	return string(b)
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name string
		env  string
		args []string
		want service.Flags
	}{
		{"none", "", nil, service.Flags{}},
		{"env default", "/etc/allot/env.yaml", nil, service.Flags{ConfigPath: "/etc/allot/env.yaml"}},
		{"flag over env", "/etc/allot/env.yaml", []string{"-config", "x.yaml", "-validate"}, service.Flags{ConfigPath: "x.yaml", Validate: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("ALLOT_CONFIG", tt.env)
			var got service.Flags
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			got.Register(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Flags (-want +got):\n%s", diff)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A service's own section of the shared file is decoded strictly where it
// stands, the other sections are left alone, and the environment wins.
func TestLoadSection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "allot.yaml")
	writeFile(t, path, "log:\n  level: debug\nmeter:\n  whatever: 1\nextra:\n  count: 3\n  labels: {a: b}\n")
	got := extraConfig{Ratio: 0.5}
	if err := service.LoadSection(&got, path, "extra", envMap(map[string]string{"X_ON": "true"})); err != nil {
		t.Fatalf("LoadSection: %v", err)
	}
	want := extraConfig{Ratio: 0.5, Count: 3, Labels: map[string]string{"a": "b"}, On: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("LoadSection (-want +got):\n%s", diff)
	}
	// A file without the section changes only what the environment says.
	none := filepath.Join(dir, "none.yaml")
	writeFile(t, none, "log:\n  level: debug\n")
	got = extraConfig{Count: 7}
	if err := service.LoadSection(&got, none, "extra", envMap(nil)); err != nil || got.Count != 7 {
		t.Errorf("no section: %+v, %v", got, err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "other: {x: 1}\nextra:\n  count: many\n  nope: 1\n")
	for _, tc := range []struct {
		name    string
		dst     any
		path    string
		section string
		want    []string
	}{
		{"the section's errors, with its path", &extraConfig{}, bad, "extra", []string{"line 3: extra.count:", "line 4: extra.nope: unknown field"}},
		{"not a pointer", extraConfig{}, bad, "extra", []string{"non-nil pointer to a struct"}},
		{"bad section name", &extraConfig{}, bad, "a: b", []string{"bad section name"}},
		{"a second document", &extraConfig{}, writeTemp(t, dir, "extra:\n  count: 1\n---\nx: 1\n"), "extra", []string{"a second YAML document"}},
		{"no file", &extraConfig{}, filepath.Join(dir, "absent.yaml"), "extra", []string{"no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := service.LoadSection(tc.dst, tc.path, tc.section, envMap(nil))
			if err == nil {
				t.Fatal("LoadSection = nil, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func writeTemp(t *testing.T, dir, text string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, f.Name(), text)
	_ = f.Close()
	return f.Name()
}

// The whole-file load lets a section another package owns stand, and
// never prints what it holds.
func TestOwnedSectionIsNotPrinted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "allot.yaml")
	writeFile(t, path, "auth:\n  issuer_seed: SAAS3CRET\n  roles: {app: {}}\n")
	cfg, err := service.Load(path, envMap(nil))
	if err != nil {
		t.Fatalf("Load with an auth section: %v", err)
	}
	if cfg.Owned.Auth.IsZero() {
		t.Error("the auth section was not seen")
	}
	if out := cfg.Redacted(); strings.Contains(out, "SAAS3CRET") || !strings.Contains(out, "auth:") {
		t.Errorf("Redacted:\n%s", out)
	}
}

// sectionsConfig is a service's view of several top-level sections: one
// of its own, one inlined (as usage.Catalog is), and a field the file and
// the environment leave alone.
type sectionsConfig struct {
	Kept   extraConfig  `yaml:"-"`
	Shared sharedConfig `yaml:",inline"`
	Extra  extraConfig  `yaml:"extra"`
}

type sharedConfig struct {
	Names map[string]int `yaml:"names"`
}

// Several sections are decoded strictly where they stand, inlined ones
// too; maps add to the defaults; the other sections are left alone; a
// field tagged yaml:"-" is touched by neither the file nor the
// environment.
func TestLoadSections(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "allot.yaml")
	writeFile(t, path, "log:\n  level: debug\nmeter:\n  whatever: 1\nnames: {b: 2}\nextra:\n  count: 3\n")
	got := sectionsConfig{Kept: extraConfig{Count: 9}, Shared: sharedConfig{Names: map[string]int{"a": 1}}}
	if err := service.LoadSections(&got, path, envMap(map[string]string{"X_ON": "true"})); err != nil {
		t.Fatalf("LoadSections: %v", err)
	}
	want := sectionsConfig{
		Kept:   extraConfig{Count: 9},
		Shared: sharedConfig{Names: map[string]int{"a": 1, "b": 2}},
		Extra:  extraConfig{Count: 3, On: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("LoadSections (-want +got):\n%s", diff)
	}

	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "other: {x: 1}\nnames: {a: many}\nextra:\n  nope: 1\n")
	for _, tc := range []struct {
		name string
		dst  any
		path string
		want []string
	}{
		{"each section's errors, with its path", &sectionsConfig{}, bad, []string{"line 2: names.a:", "line 4: extra.nope: unknown field"}},
		{"not a pointer", sectionsConfig{}, bad, []string{"LoadSections needs a non-nil pointer to a struct"}},
		{"no file", &sectionsConfig{}, filepath.Join(dir, "absent.yaml"), []string{"no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := service.LoadSections(tc.dst, tc.path, envMap(nil))
			if err == nil {
				t.Fatal("LoadSections = nil, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// The sections a service prints take the place of the runtime's note of
// them, or come after the runtime's keys: one document, each key once.
func TestRedactedWithSections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "allot.yaml")
	writeFile(t, path, "auth:\n  issuer_seed: SAAS3CRET\n")
	cfg, err := service.Load(path, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Instance = "test"
	got := cfg.Redacted("auth:\n  issuer_seed: '[redacted]'\n", "extra:\n  count: 3\nauth:\n  key_ttl: 1h\n")
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(got), &doc); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, got)
	}
	var keys []string
	for i := 0; i < len(doc.Content[0].Content); i += 2 {
		keys = append(keys, doc.Content[0].Content[i].Value)
	}
	if diff := cmp.Diff([]string{"nats", "redis", "http", "log", "shutdown", "subjects", "streams", "registry", "auth", "instance", "extra"}, keys); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	for _, want := range []string{"auth:\n  key_ttl: 1h\n", "extra:\n  count: 3\n", "key_prefix: 'allot:'"} {
		if !strings.Contains(got, want) {
			t.Errorf("Redacted lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "decoded by the service") || strings.Contains(got, "SAAS3CRET") {
		t.Errorf("the owner's section did not replace the note:\n%s", got)
	}
}

// checkedConfig is a service's configuration as LoadChecked and SectionOf
// take it: the runtime's beside its own section.
type checkedConfig struct {
	service.Config `yaml:"-"`
	Extra          extraConfig `yaml:"extra"`
}

func (c checkedConfig) Validate() error {
	if c.Extra.Count > 5 {
		return fmt.Errorf("extra.count: at most 5, got %d", c.Extra.Count)
	}
	return nil
}

// LoadChecked reads a service's sections over its defaults and checks
// them; SectionOf prints what the service read, without the runtime's.
func TestLoadCheckedAndSectionOf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "allot.yaml")
	writeFile(t, path, "log:\n  level: debug\nextra:\n  count: 3\n  key: s3cret\n")
	load := func(rt service.Config, path string, getenv func(string) string) (checkedConfig, error) {
		return service.LoadChecked(checkedConfig{Config: rt, Extra: extraConfig{Ratio: 0.5}}, path, getenv)
	}
	rt := service.Default()
	got, err := load(rt, path, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got.Extra.Count != 3 || got.Extra.Ratio != 0.5 || got.Extra.Key.Reveal() != "s3cret" || got.Log.Level != "info" {
		t.Errorf("LoadChecked = %+v", got)
	}
	out, err := service.SectionOf(load).Load(rt, path, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "extra:\n") || !strings.Contains(out, "count: 3") || strings.Contains(out, "s3cret") || strings.Contains(out, "nats:") {
		t.Errorf("SectionOf printed:\n%s", out)
	}
	writeFile(t, path, "extra:\n  count: 6\n")
	if got, err := load(rt, path, envMap(nil)); err == nil || !strings.Contains(err.Error(), "extra.count") || got.Extra.Count != 0 {
		t.Errorf("a broken section: %+v, %v", got, err)
	}
	if _, err := service.SectionOf(load).Load(rt, path, envMap(nil)); err == nil {
		t.Error("SectionOf printed a broken section")
	}

	// Loaded reads the configuration from the file Run was given and
	// starts the service with it; a broken one starts nothing.
	var started *checkedConfig
	start := service.Loaded(load, func(c checkedConfig) service.StartFunc {
		return func(context.Context, service.Deps) (func(context.Context) error, error) {
			started = &c
			return nil, nil
		}
	})
	if _, err := start(t.Context(), service.Deps{Config: rt, ConfigPath: path, Getenv: envMap(nil)}); err == nil || started != nil {
		t.Errorf("Loaded with a broken section: %v, started %v", err, started)
	}
	writeFile(t, path, "extra:\n  count: 4\n")
	if _, err := start(t.Context(), service.Deps{Config: rt, ConfigPath: path, Getenv: envMap(nil)}); err != nil || started == nil || started.Extra.Count != 4 {
		t.Errorf("Loaded: %v, started with %+v", err, started)
	}
}

// stopper is a started part that records its Stop.
type stopper struct{ stopped bool }

func (s *stopper) Stop(context.Context) error { s.stopped = true; return nil }

// Starting returns the part's Stop, or the error that kept it from
// starting.
func TestStarting(t *testing.T) {
	s := &stopper{}
	stop, err := service.Starting(func(context.Context, service.Deps) (*stopper, error) { return s, nil })(t.Context(), service.Deps{})
	if err != nil || stop == nil {
		t.Fatalf("Starting = %v (stop %v)", err, stop != nil)
	}
	if err := stop(t.Context()); err != nil || !s.stopped {
		t.Errorf("stop = %v, stopped %v", err, s.stopped)
	}
	stop, err = service.Starting(func(context.Context, service.Deps) (*stopper, error) { return nil, fmt.Errorf("no") })(t.Context(), service.Deps{})
	if err == nil || stop != nil {
		t.Errorf("a failed start: %v, stop %v", err, stop != nil)
	}
}
