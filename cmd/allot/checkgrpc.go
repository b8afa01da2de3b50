package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"strings"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

// grpcFlags are allot check's flags for the Envoy RLS front.
type grpcFlags struct {
	addr        string
	domain      string
	descriptors descriptorFlags
	hits        uint
	timeout     time.Duration // -timeout
}

// descriptorFlags collects -descriptor k=v[,k2=v2], one descriptor each.
type descriptorFlags []*rlcommon.RateLimitDescriptor

func (d *descriptorFlags) String() string { return "" }

func (d *descriptorFlags) Set(s string) error {
	var desc rlcommon.RateLimitDescriptor
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("want key=value[,key=value], got %q", s)
		}
		desc.Entries = append(desc.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: k, Value: v})
	}
	*d = append(*d, &desc)
	return nil
}

func registerGRPCFlags(fs *flag.FlagSet) *grpcFlags {
	g := &grpcFlags{}
	fs.StringVar(&g.addr, "grpc", "", "ask the Envoy RLS front at this `host:port` instead of NATS")
	fs.StringVar(&g.domain, "domain", "allot", "with -grpc: the rate limit domain")
	fs.Var(&g.descriptors, "descriptor", "with -grpc: a descriptor, `key=value[,key=value]`; repeat for more")
	fs.UintVar(&g.hits, "hits", 1, "with -grpc: the request's hits_addend")
	return g
}

// runCheckGRPC asks ShouldRateLimit as Envoy does and prints the answer.
func runCheckGRPC(ctx context.Context, env *cliEnv, g *grpcFlags, asJSON bool) error {
	if len(g.descriptors) == 0 {
		return usagef("-grpc needs at least one -descriptor key=value")
	}
	if g.hits > math.MaxUint32 {
		return usagef("-hits: at most %d", uint32(math.MaxUint32))
	}
	conn, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("grpc %s: %w", g.addr, err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	resp, err := rlv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, &rlv3.RateLimitRequest{
		Domain: g.domain, Descriptors: g.descriptors, HitsAddend: uint32(g.hits)})
	if err != nil {
		return fmt.Errorf("grpc %s: %w", g.addr, err)
	}
	if asJSON {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(resp)
		if err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, string(b))
	} else {
		fmt.Fprintln(env.stdout, resp.GetOverallCode())
		for i, st := range resp.GetStatuses() {
			fmt.Fprintf(env.stdout, "  descriptor %d: %s", i, st.GetCode())
			if l := st.GetCurrentLimit(); l != nil {
				fmt.Fprintf(env.stdout, ", %d of %d per %s left, resets in %s", st.GetLimitRemaining(), l.GetRequestsPerUnit(),
					strings.ToLower(l.GetUnit().String()), st.GetDurationUntilReset().AsDuration())
			} else {
				fmt.Fprint(env.stdout, ", no limit")
			}
			fmt.Fprintln(env.stdout)
		}
		for _, h := range resp.GetResponseHeadersToAdd() {
			fmt.Fprintf(env.stdout, "  %s: %s\n", h.GetKey(), h.GetValue())
		}
	}
	if resp.GetOverallCode() == rlv3.RateLimitResponse_OVER_LIMIT {
		return fmt.Errorf("denied: over the limit")
	}
	return nil
}
