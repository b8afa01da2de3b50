package devstack

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// calloutConfig makes up the passwords of the auth service's own users
// for this run and returns the server's callout configuration.
func calloutConfig(cfg auth.Config) (*auth.ServerConfig, error) {
	issuer, err := cfg.Issuer()
	if err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	pub, _ := issuer.PublicKey()
	pw, err := randomSecret(24)
	if err != nil {
		return nil, fmt.Errorf("devstack: auth: %w", err)
	}
	return &auth.ServerConfig{Issuer: pub, AuthUser: "allot-auth", AuthPassword: pw, SysUser: cfg.SysUser, SysPassword: cfg.SysPassword.Reveal()}, nil
}

// startAuth starts the auth service on its own two connections, with an
// admin, an app and a service key made for the run, and returns the
// service key, which the other services connect with.
func (s *Stack) startAuth(ctx context.Context, acfg auth.Config, sc auth.ServerConfig, cfg service.Config, rdb redis.UniversalClient, log *slog.Logger) (string, error) {
	connect := func(name, user, password string) (*nats.Conn, error) {
		c := cfg.NATS
		c.Name, c.User, c.Password, c.Token, c.CredsFile, c.Key = name, user, service.Secret(password), "", "", ""
		nc, err := service.ConnectNATS(ctx, c, log)
		if err != nil {
			return nil, fmt.Errorf("devstack: auth: %w", err)
		}
		s.closers.Push(name+" connection", func(context.Context) error { nc.Close(); return nil })
		return nc, nil
	}
	own, err := connect("allot-auth", sc.AuthUser, sc.AuthPassword)
	if err != nil {
		return "", err
	}
	sys, err := connect("allot-auth-sys", sc.SysUser, sc.SysPassword)
	if err != nil {
		return "", err
	}
	keys := map[string]string{}
	for _, role := range []string{"admin", "app", "service"} {
		k, err := auth.NewKey()
		if err != nil {
			return "", fmt.Errorf("devstack: auth: %w", err)
		}
		keys[role] = k
		acfg.StaticKeys = append(acfg.StaticKeys, service.Secret(role+"="+k))
	}
	svc, err := auth.Start(ctx, acfg, auth.Deps{NATS: own, Sys: sys, Redis: rdb, KeyPrefix: cfg.Redis.KeyPrefix, Registerer: s.Registry, Instance: cfg.Instance, Log: log})
	if err != nil {
		return "", fmt.Errorf("devstack: start auth: %w", err)
	}
	s.closers.Push("auth", svc.Stop)
	s.Services = append(s.Services, "auth")
	s.AdminKey, s.AppKey = keys["admin"], keys["app"]
	return keys["service"], nil
}
