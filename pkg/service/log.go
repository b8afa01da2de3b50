package service

import (
	"fmt"
	"io"
	"log/slog"
)

// NewLogger returns a logger writing to w in cfg's format (text or json)
// from cfg's level up (debug, info, warn or error).
func NewLogger(cfg LogConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	switch cfg.Level {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, fmt.Errorf("service: log.level: must be one of debug, info, warn, error, got %q", cfg.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.Format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("service: log.format: must be one of text, json, got %q", cfg.Format)
	}
}

// orDiscard returns log, or a logger that drops everything if log is nil.
func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
