package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// kicker disconnects every connection of a key, on every server of the
// cluster, from the system account: it asks all servers for the
// connections whose user is the key id (the callout names each user after
// its key) and kicks each by its client id. A kicked client reconnects and
// is decided anew: refused if the key was revoked, with its new
// permissions if it was adjusted.
type kicker struct {
	sys *nats.Conn
	// gather is how long the servers' answers are awaited: a cluster's
	// size is not known, so every answer within it counts.
	gather time.Duration
	log    *slog.Logger
}

// connz is the part of a server's CONNZ answer the kicker reads.
type connz struct {
	Server struct {
		ID string `json:"id"`
	} `json:"server"`
	Data struct {
		Conns []struct {
			CID uint64 `json:"cid"`
		} `json:"connections"`
	} `json:"data"`
	Error *struct {
		Description string `json:"description"`
	} `json:"error"`
}

// Kick disconnects the connections of keyID and returns how many it
// kicked.
func (k *kicker) Kick(ctx context.Context, keyID string) (int, error) {
	inbox := k.sys.NewRespInbox()
	sub, err := k.sys.SubscribeSync(inbox)
	if err != nil {
		return 0, fmt.Errorf("auth: kick %s: %w", keyID, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, _ := json.Marshal(map[string]any{"user": keyID, "limit": 1 << 20})
	if err := k.sys.PublishRequest("$SYS.REQ.SERVER.PING.CONNZ", inbox, req); err != nil {
		return 0, fmt.Errorf("auth: kick %s: ask the servers: %w", keyID, err)
	}
	deadline := time.Now().Add(k.gather)
	kicked := 0
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return kicked, nil
		}
		msg, err := sub.NextMsg(wait)
		if err != nil {
			return kicked, nil // nats.ErrTimeout: every server that answers in time has
		}
		var z connz
		if err := json.Unmarshal(msg.Data, &z); err != nil || z.Error != nil || z.Server.ID == "" {
			k.log.Warn("a server's connection list could not be read", "err", err, "answer", string(msg.Data))
			continue
		}
		for _, c := range z.Data.Conns {
			body, _ := json.Marshal(map[string]uint64{"cid": c.CID})
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := k.sys.RequestWithContext(rctx, "$SYS.REQ.SERVER."+z.Server.ID+".KICK", body)
			cancel()
			if err != nil {
				k.log.Warn("a connection could not be kicked", "key", keyID, "server", z.Server.ID, "cid", c.CID, "err", err)
				continue
			}
			kicked++
		}
	}
}
