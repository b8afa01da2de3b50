package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func noEnv(string) string { return "" }

func TestParseOptionsRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // in the error
	}{
		{"duration too short", []string{"-duration", "1s"}, "-duration: must be between 2s and 1h"},
		{"duration too long", []string{"-duration", "2h"}, "-duration"},
		{"negative rate", []string{"-rate", "-5"}, "-rate"},
		{"zero apps", []string{"-apps", "0"}, "-apps"},
		{"too many uids", []string{"-uids", "2000000"}, "-uids"},
		{"zero concurrency", []string{"-concurrency", "0"}, "-concurrency"},
		{"dup ratio", []string{"-dup", "0.9"}, "-dup"},
		{"bad ratio NaN", []string{"-bad", "NaN"}, "-bad"},
		{"unknown scenario", []string{"-scenarios", "ingest,bogus"}, `unknown scenario "bogus"`},
		{"unknown target", []string{"-target", "k8s"}, "-target"},
		{"external without urls", []string{"-target", "external"}, "-nats-url: the external target needs"},
		{"unknown profile", []string{"-profile", "huge"}, "unknown profile"},
		{"stray argument", []string{"ingest"}, "unexpected argument"},
		{"grace too short", []string{"-grace", "1s"}, "-grace"},
		{"bad redis url", []string{"-redis-url", "localhost:6379"}, "-redis-url"},
		{"not a number", []string{"-apps", "many"}, "invalid value"},
		{"redis addrs and url", []string{"-redis-addrs", "127.0.0.1:17001", "-redis-url", "redis://127.0.0.1:6379"}, "-redis-addrs: give -redis-url or -redis-addrs"},
		{"redis addrs not host:port", []string{"-redis-addrs", "127.0.0.1:17001,nohost"}, `-redis-addrs: "nohost" is not a host:port`},
		{"redis addrs on external", []string{"-target", "external", "-nats-url", "nats://127.0.0.1:4222", "-redis-url", "redis://127.0.0.1:6379", "-redis-addrs", "127.0.0.1:17001"}, "-redis-addrs"},
		{"stacks zero", []string{"-stacks", "0"}, "-stacks"},
		{"stacks without servers", []string{"-stacks", "3"}, "-stacks: more than one stack process must share"},
		{"replicas zero", []string{"-replicas", "0"}, "-replicas"},
		{"replicas six", []string{"-replicas", "6"}, "-replicas"},
		{"replicas on external", []string{"-target", "external", "-nats-url", "nats://127.0.0.1:4222", "-redis-url", "redis://127.0.0.1:6379", "-replicas", "3"}, "-replicas: is the inprocess"},
		{"one partition", []string{"-partitions", "1"}, "-partitions: must be 0 or 2 to 1024"},
		{"too many partitions", []string{"-partitions", "2000"}, "-partitions"},
		{"partitions on external", []string{"-target", "external", "-nats-url", "nats://127.0.0.1:4222", "-redis-url", "redis://127.0.0.1:6379", "-partitions", "4"}, "-partitions: is the inprocess"},
		{"partitions in the fault suite", []string{"-profile", "faults-quick", "-partitions", "4"}, "-partitions"},
		{"negative stack cap", []string{"-stack-cpu", "-1"}, "-stack-cpu: must be 0 (no cap) or 0.05 to 64"},
		{"stack cap NaN", []string{"-stack-cpu", "NaN"}, "-stack-cpu"},
		{"stack cap too small", []string{"-stack-cpu", "0.04"}, "-stack-cpu"},
		{"stack cap on external", []string{"-target", "external", "-nats-url", "nats://127.0.0.1:4222", "-redis-url", "redis://127.0.0.1:6379", "-stack-cpu", "0.5"}, "-stack-cpu: is for the inprocess"},
		{"stack cap in the fault suite", []string{"-profile", "faults-quick", "-stack-cpu", "0.5"}, "-stack-cpu"},
		{"batch wait negative", []string{"-batch-wait", "-1ms"}, "-batch-wait"},
		{"batch wait too long", []string{"-batch-wait", "2s"}, "-batch-wait"},
		{"batch in flight negative", []string{"-batch-inflight", "-1"}, "-batch-inflight"},
		{"grpc not host:port", []string{"-grpc", "localhost"}, `-grpc: "localhost" is not a host:port`},
		{"grpc without its scenario", []string{"-profile", "quick", "-grpc", "127.0.0.1:8081"}, "-grpc: the grpc scenario is not in -scenarios"},
		{"grpc on external without address", []string{"-target", "external", "-nats-url", "nats://127.0.0.1:4222", "-redis-url", "redis://127.0.0.1:6379", "-scenarios", "grpc"}, "-grpc: the external target needs"},
		{"grpc profile on external without address", []string{"-profile", "grpc", "-target", "external", "-nats-url", "nats://127.0.0.1:4222", "-redis-url", "redis://127.0.0.1:6379"}, "-grpc: the external target needs"},
		{"empty grpc domain", []string{"-grpc-domain", ""}, "-grpc-domain: must name a domain"},
		{"empty grpc descriptor", []string{"-scenarios", "grpc", "-grpc-descriptor", ""}, "-grpc-descriptor: must name a descriptor key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := parseOptions(tc.args, noEnv, &stderr)
			if err == nil {
				t.Fatalf("parseOptions(%q) = nil error, want one containing %q", tc.args, tc.want)
			}
			if !strings.Contains(err.Error()+stderr.String(), tc.want) {
				t.Errorf("parseOptions(%q) error = %q, want it to contain %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestParseOptionsProfiles(t *testing.T) {
	o, err := parseOptions([]string{"-profile", "quick"}, noEnv, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != 10*time.Second || strings.Join(o.Scenarios, ",") != "ingest,credit" {
		t.Errorf("quick = %v %v, want 10s ingest,credit", o.Duration, o.Scenarios)
	}
	o, err = parseOptions([]string{"-profile", "quick", "-duration", "5s", "-scenarios", "ratelimit, registry"}, noEnv, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != 5*time.Second || strings.Join(o.Scenarios, ",") != "ratelimit,registry" {
		t.Errorf("explicit flags = %v %v, want 5s ratelimit,registry", o.Duration, o.Scenarios)
	}
	o, err = parseOptions([]string{"-profile", "grpc", "-grpc", "127.0.0.1:8081", "-grpc-domain", "rl"}, noEnv, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != 15*time.Second || strings.Join(o.Scenarios, ",") != "ratelimit,grpc" || o.UIDs != 10_000 || o.GRPCDomain != "rl" || o.GRPCDescriptor != "uid" {
		t.Errorf("grpc = %v %v %d uids %q %q, want 15s ratelimit,grpc 10000 uids rl uid", o.Duration, o.Scenarios, o.UIDs, o.GRPCDomain, o.GRPCDescriptor)
	}
	if o, _ := parseOptions([]string{"-profile", "grpc", "-uids", "50"}, noEnv, &bytes.Buffer{}); o.UIDs != 50 {
		t.Errorf("-uids 50 over the grpc profile = %d", o.UIDs)
	}
	env := map[string]string{"NATS_URL": "nats://example:4222", "REDIS_URL": "redis://example:6379/0"}
	o, err = parseOptions([]string{"-target", "external"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil || o.NATSURL != env["NATS_URL"] || o.RedisURL != env["REDIS_URL"] || o.has("grpc") {
		t.Errorf("external from the environment = %+v, %v", o, err)
	}
}

func TestHelpAndBadFlagExitCodes(t *testing.T) {
	var stderr bytes.Buffer
	if _, err := parseOptions([]string{"-h"}, noEnv, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"Targets:", "Scenarios", "-duration", "Exit status"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("-h output lacks %q", want)
		}
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &out, &out, noEnv); code != exitOK {
		t.Errorf("run -h = %d, want %d", code, exitOK)
	}
	out.Reset()
	if code := run(context.Background(), []string{"-duration", "0s"}, &out, &out, noEnv); code != exitBadFlag {
		t.Errorf("run -duration 0s = %d, want %d", code, exitBadFlag)
	}
	if !strings.Contains(out.String(), "-duration") {
		t.Errorf("bad flag output = %q, want it to name -duration", out.String())
	}
}
