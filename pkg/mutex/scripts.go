package mutex

import (
	"context"
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The Lua sources; each file starts with its KEYS / ARGV / returns contract.
var (
	//go:embed acquire.lua
	acquireLua string
	//go:embed release.lua
	releaseLua string
	//go:embed refresh.lua
	refreshLua string
	//go:embed pttl.lua
	pttlLua string
)

// Scripter is the part of a go-redis client this package uses: *redis.Client,
// *redis.ClusterClient, *redis.Ring and redis.UniversalClient all satisfy it.
// Every Redis call goes through a Lua script, sent as EVALSHA and resent as
// EVAL only when the server answers NOSCRIPT; ScriptExists and ScriptLoad are
// used by [Locker.Preload].
type Scripter interface {
	Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd
	EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd
	ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd
	ScriptLoad(ctx context.Context, script string) *redis.StringCmd
}

// script is one Lua source and its SHA1.
type script struct {
	src, hash string
}

func newScript(src string) script {
	return script{src: src, hash: redis.NewScript(src).Hash()}
}

// run sends the script by hash, and its source only if the server does not
// know the hash yet (first use, or after SCRIPT FLUSH or a restart): one round
// trip in the common case.
func (s script) run(ctx context.Context, c Scripter, keys []string, args ...any) (int64, error) {
	n, err := c.EvalSha(ctx, s.hash, keys, args...).Int64()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		return c.Eval(ctx, s.src, keys, args...).Int64()
	}
	return n, err
}

// scripts are the four scripts a Locker runs.
type scripts struct {
	acquire, release, refresh, pttl script
}

func newScripts() scripts {
	return scripts{
		acquire: newScript(acquireLua),
		release: newScript(releaseLua),
		refresh: newScript(refreshLua),
		pttl:    newScript(pttlLua),
	}
}

func (s *scripts) all() []script {
	return []script{s.acquire, s.release, s.refresh, s.pttl}
}
