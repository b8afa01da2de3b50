package service_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/allot/allot/pkg/service"
)

// timeField matches the time attribute of a text or JSON log line.
var timeField = regexp.MustCompile(`time=\S+ |"time":"[^"]*",`)

func TestNewLogger(t *testing.T) {
	tests := []struct {
		name string
		cfg  service.LogConfig
		want []string // lines logged by Debug "d", Info "i", Warn "w", Error "e"
	}{
		{"text info", service.LogConfig{Level: "info", Format: "text"}, []string{
			`level=INFO msg=i k=v`, `level=WARN msg=w k=v`, `level=ERROR msg=e k=v`,
		}},
		{"text debug", service.LogConfig{Level: "debug", Format: "text"}, []string{
			`level=DEBUG msg=d k=v`, `level=INFO msg=i k=v`, `level=WARN msg=w k=v`, `level=ERROR msg=e k=v`,
		}},
		{"json warn", service.LogConfig{Level: "warn", Format: "json"}, []string{
			`{"level":"WARN","msg":"w","k":"v"}`, `{"level":"ERROR","msg":"e","k":"v"}`,
		}},
		{"json error", service.LogConfig{Level: "error", Format: "json"}, []string{
			`{"level":"ERROR","msg":"e","k":"v"}`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := service.NewLogger(tt.cfg, &buf)
			if err != nil {
				t.Fatalf("NewLogger: %v", err)
			}
			log.Debug("d", "k", "v")
			log.Info("i", "k", "v")
			log.Warn("w", "k", "v")
			log.Error("e", "k", "v")
			// Drop the time, which changes on every run.
			got := strings.Split(strings.TrimSpace(timeField.ReplaceAllString(buf.String(), "")), "\n")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("logged lines (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewLoggerErrors(t *testing.T) {
	tests := []struct {
		cfg  service.LogConfig
		want string
	}{
		{service.LogConfig{Level: "verbose", Format: "text"}, "service: log.level: must be one of"},
		{service.LogConfig{Level: "info", Format: "xml"}, "service: log.format: must be one of"},
	}
	for _, tt := range tests {
		t.Run(tt.cfg.Level+"/"+tt.cfg.Format, func(t *testing.T) {
			log, err := service.NewLogger(tt.cfg, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewLogger = %v, %v; want an error containing %q", log, err, tt.want)
			}
		})
	}
}
