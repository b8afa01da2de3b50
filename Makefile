# allot's Makefile: every target runs over every module of the workspace.
#
#   make run          build bin/allot and start the whole system in one
#                     process (bin/allot dev)
#   make test         unit tests, then the integration tests against the real
#                     Redis and the pinned nats-server (started for the run;
#                     skipped when Redis does not answer, unless
#                     ALLOT_REQUIRE_INTEGRATION=1), all with -race, then the
#                     store suites with the test clock a year ahead
#   make bench        benchmarks, against the local NATS and Redis when they run
#   make lint         go vet and a gofmt check
#   make loadtest     the 60-second load test of the whole stack, with raw
#                     baselines and the exactness check (report in loadtest/out/)
#   make loadtest-quick  the same in 10 seconds, as CI runs it: against the
#                     pinned nats-server and the real Redis
#   make loadtest-grpc   the rate limiter's Envoy RLS front (gRPC) beside
#                     ratelimit.check and the raw responder, 15 s, on the pinned
#                     nats-server and the real Redis; not in CI. LOADTEST_FLAGS
#                     adds flags, e.g. "-grpc 127.0.0.1:8081 -grpc-domain rl" to
#                     load an envoyproxy/ratelimit of your own in the same run
#   make loadtest-batch  ratelimit.check and meter.credit with the client
#                     batching calls in flight together, beside the same alone
#                     and the bare responder floor, 15 s, on the pinned
#                     nats-server and the real Redis; not in CI
#   make loadtest-faults the fault suite (loadtest/README.md): for each scenario
#                     a nats-server (the pinned one) and a redis-server of its
#                     own on spare ports, every service in its own process
#                     behind toxiproxy, faults injected under load (kill -9 of
#                     each service and of NATS, Redis restarted empty or
#                     unreachable, partitions, a 1,000,000-event backlog, a
#                     flood of malformed messages), the exactness check after;
#                     one table, loadtest/out/faults.md; exits 1 on a row that
#                     is not 0 lost, 0 double-counted, 0 notices sent twice.
#                     FAULTS=kill-meter,... runs some scenarios only
#   make loadtest-faults-quick  its short profile (12 s of traffic a scenario,
#                     a 50,000-event backlog, 10,000 malformed messages), as
#                     CI runs it
#   make cluster-up | cluster-down   a 3-node NATS cluster and a Redis Cluster of
#                     3 masters and 3 replicas on loopback ports (tools/cluster)
#   make cluster-test    the store suites on that Redis Cluster (every script
#                     and read on a Cluster client), then the integration tests
#                     on that NATS cluster, and the quick load test on both
#                     (streams at R3); started and stopped for the run
#   make cluster-faults  the fault suite's cluster scenarios: on a 3-node NATS
#                     cluster and a Redis Cluster of 3 masters and 3 replicas
#                     of their own (spare ports, never tools/cluster's), two
#                     processes of every service, the NATS node leading the
#                     usage stream and the meter's consumer killed -9 under
#                     load (meter.fetch_wait 30s, then 5s), then a Redis
#                     master (meter.wait_replicas 0, then 1), then one
#                     master emptied (FLUSHALL: the slots rebuilt); exactness
#                     checked, the uids that saw errors named
#                     (loadtest/out/cluster-faults/faults.md); not in CI
#   make cluster-faults-quick  the emptied master alone, short profile (CI)
#   make fmt | tidy | build | fuzz

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Every module in go.work, as ./path (the tools module is kept out).
MODULES := $(shell go list -m -f '{{.Dir}}' | sed "s|^$(CURDIR)|.|")
PKGS := $(addsuffix /...,$(MODULES))

# Modules kept out of go.work, so that their dependencies never reach the
# allot modules, each tested, vetted, tidied and built alone (GOWORK=off):
# deploy/k8s/promcheck imports the Prometheus module to check the alerts
# and the dashboard (deploy/k8s's TestMonitoring runs it).
ALONE_MODULES := ./deploy/k8s/promcheck

BIN := $(CURDIR)/.bin
GOTESTSUM := $(BIN)/gotestsum
TESTFLAGS ?= -race -count=1
FUZZTIME ?= 30s
BENCHTIME ?= 1s

# The real Redis of the integration tests, the benchmarks and the quick
# load test.
export ALLOT_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

# The NATS they run against is the pinned nats-server: the version of the
# nats-server module in the workspace, which is also what the embedded
# server of `allot dev` and the unit tests runs. Moving NATS is one
# `go get github.com/nats-io/nats-server/v2@<version>` and `make tidy`;
# `make lint` checks that every module requires the same version. It is
# built from the module (nothing else is downloaded) and started on a free
# port for each run by tools/with-nats, which honours an
# ALLOT_TEST_NATS_URL you set instead.
NATS_SERVER_VERSION := $(shell go list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2)
NATS_SERVER := $(BIN)/nats-server-$(NATS_SERVER_VERSION)
WITH_NATS := tools/with-nats $(NATS_SERVER) --
# Tests that start a nats-server of their own (the auth callout's, with its
# own configuration) run this binary.
export ALLOT_TEST_NATS_SERVER := $(NATS_SERVER)

# The guard against tests that secretly depend on today's date: the store
# suites once more with every test clock (and miniredis's server clock)
# moved this far ahead (pkg/testenv.ClockShift).
CLOCK_AHEAD ?= 8760h
STORE_PKGS := ./services/meter/internal/store/... ./services/ratelimit/internal/store/... ./services/registry/internal/store/...

# What every binary says it is (allot version, each binary's -version,
# allot_build_info, the micro services' version), linked into pkg/service
# by make run, make build and make images: VERSION is the release, the
# v-tag on HEAD without its v (none: the binary says 0.0.0-dev+<revision>);
# REVISION the commit; MODIFIED whether the checkout has changes.
VERSION ?= $(shell git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null | sed 's/^v//')
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
MODIFIED ?= $(shell test -z "$$(git status --porcelain 2>/dev/null)" && echo false || echo true)
SERVICE_PKG := github.com/allot/allot/pkg/service
LDFLAGS = -X $(SERVICE_PKG).version=$(VERSION) -X $(SERVICE_PKG).revision=$(REVISION) -X $(SERVICE_PKG).modified=$(MODIFIED)

.PHONY: run test test-unit test-integration test-clock-ahead bench lint fmt tidy build fuzz clean modules loadtest loadtest-quick loadtest-grpc loadtest-batch loadtest-faults loadtest-faults-quick nats-server cluster-up cluster-down cluster-test cluster-growth cluster-faults cluster-faults-quick

# run builds bin/allot, saying how far along it is (cmd/allot/build.sh),
# then execs it in place of make's shell: Ctrl-C reaches allot dev, which
# stops cleanly and exits 0, so make reports no error.
run:
	@LDFLAGS='$(LDFLAGS)' cmd/allot/build.sh bin/allot
	@echo "== starting bin/allot dev"
	@exec bin/allot dev

modules:
	@printf '%s\n' $(MODULES)

$(GOTESTSUM): tools/go.mod tools/go.sum
	cd tools && GOWORK=off go build -o $(GOTESTSUM) gotest.tools/gotestsum

test: test-unit test-integration test-clock-ahead

test-unit: $(GOTESTSUM)
	@echo "== unit tests ($(words $(MODULES)) modules)"
	$(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) $(PKGS)
	@for m in $(ALONE_MODULES); do \
		echo "== unit tests of $$m (outside go.work)"; \
		(cd $$m && GOWORK=off $(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) ./...); \
	done

test-integration: $(GOTESTSUM) $(NATS_SERVER)
	@echo "== integration tests against nats-server $(NATS_SERVER_VERSION) and Redis $(ALLOT_TEST_REDIS_URL)"
	$(WITH_NATS) $(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) -tags integration -run '^TestIntegration' $(PKGS)

test-clock-ahead: $(GOTESTSUM) $(NATS_SERVER)
	@echo "== store suites with the test clock $(CLOCK_AHEAD) ahead (ALLOT_TEST_CLOCK_SHIFT)"
	ALLOT_TEST_CLOCK_SHIFT=$(CLOCK_AHEAD) $(WITH_NATS) $(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) -tags integration -skip '^TestCluster' $(STORE_PKGS)

# Loopback clusters (tools/cluster; eval "$$(tools/cluster env)" points
# allot and the tests at them).
cluster-up: $(NATS_SERVER)
	NATS_BIN=$(NATS_SERVER) tools/cluster up

cluster-down:
	tools/cluster down

# The store suites on a Redis Cluster of its own (each script's keys must
# hash to one slot, or Redis refuses it: CROSSSLOT), then the integration
# tests with the 3-node NATS cluster as their NATS (and the real Redis),
# and the quick load test with the whole stack on both clusters, three
# processes of it (three replicas of every service), every stream at R3,
# exactness and the meters' one-at-a-time checked. (Partitioned, -partitions
# 6, it is not in CI yet: a partition handed between meters on the NATS
# cluster can leave events on their way to the old one, redelivered after
# the ack wait; README "Running on clusters".)
cluster-test: $(GOTESTSUM) $(NATS_SERVER)
	@echo "== the store suites on a Redis Cluster, the integration tests on a 3-node NATS cluster (tools/cluster)"
	NATS_BIN=$(NATS_SERVER) tools/cluster up
	trap 'tools/cluster down' EXIT; eval "$$(tools/cluster test-env)"; \
	ALLOT_REQUIRE_CLUSTER=1 $(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) -tags integration -run '^TestCluster' $(STORE_PKGS) ./services/registry/... ./services/meter && \
	$(GOTESTSUM) --format pkgname-and-test-fails -- -count=1 -tags integration -run '^TestIntegration' $(PKGS) && \
	(cd loadtest && go run . --profile quick -stacks 3 -partitions 6 -replicas 3 -nats-url "$$ALLOT_TEST_NATS_URL" -redis-addrs "$$ALLOT_TEST_REDIS_CLUSTER" -out out/cluster)

# How throughput grows with replicas (README, "Running on clusters"):
# 1, 2 and 3 stack processes, each capped at STACK_CPU cores in a cgroup
# of its own (Linux, root), on the single servers and on the loopback
# clusters, taking turns; about 5 minutes. Not in CI: it needs the right
# to write /sys/fs/cgroup.
STACK_CPU ?= 0.15
GROWTH_FLAGS = --profile quick -duration 20s -concurrency 96 -scenarios ingest,credit,ratelimit -partitions 6 -stack-cpu $(STACK_CPU)

cluster-growth: $(NATS_SERVER)
	NATS_BIN=$(NATS_SERVER) tools/cluster up
	trap 'tools/cluster down' EXIT; eval "$$(tools/cluster test-env)"; \
	$(WITH_NATS) bash -c 'cd loadtest && for n in 1 2 3; do \
	  go run . $(GROWTH_FLAGS) -stacks $$n -nats-url "$$ALLOT_TEST_NATS_URL" -redis-url "$(ALLOT_TEST_REDIS_URL)" -out out/growth-single-$$n || exit 1; \
	  go run . $(GROWTH_FLAGS) -stacks $$n -replicas 3 -nats-url "'"$$ALLOT_TEST_NATS_URL"'" -redis-addrs "'"$$ALLOT_TEST_REDIS_CLUSTER"'" -out out/growth-cluster-$$n || exit 1; \
	done'

# The pinned nats-server, built from the module into .bin/.
nats-server: $(NATS_SERVER)
	@$(NATS_SERVER) --version

$(NATS_SERVER):
	@echo "== building nats-server $(NATS_SERVER_VERSION) from its Go module"
	@mkdir -p $(BIN)
	go build -o $@ github.com/nats-io/nats-server/v2

bench: $(NATS_SERVER)
	$(WITH_NATS) bash -c 'ALLOT_BENCH_NATS_URL=$${ALLOT_BENCH_NATS_URL-$$ALLOT_TEST_NATS_URL} \
	ALLOT_BENCH_REDIS_URL=$${ALLOT_BENCH_REDIS_URL-$(ALLOT_TEST_REDIS_URL)} \
	go test -run "^$$" -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)'

loadtest:
	cd loadtest && go run . --profile default

loadtest-quick: $(NATS_SERVER)
	$(WITH_NATS) bash -c 'cd loadtest && go run . --profile quick -nats-url "$$ALLOT_TEST_NATS_URL" -redis-url "$(ALLOT_TEST_REDIS_URL)"'

loadtest-grpc: $(NATS_SERVER)
	$(WITH_NATS) bash -c 'cd loadtest && go run . --profile grpc -nats-url "$$ALLOT_TEST_NATS_URL" -redis-url "$(ALLOT_TEST_REDIS_URL)" $(LOADTEST_FLAGS)'

loadtest-batch: $(NATS_SERVER)
	$(WITH_NATS) bash -c 'cd loadtest && go run . --profile batch -nats-url "$$ALLOT_TEST_NATS_URL" -redis-url "$(ALLOT_TEST_REDIS_URL)" $(LOADTEST_FLAGS)'

# The fault suite starts its own servers (never the shared Redis on 6379
# or the NATS on 4222): the pinned nats-server, and redis-server from the
# PATH. FAULTS names a subset of its scenarios (default: all).
FAULTS ?=
FAULT_FLAGS = -nats-server $(NATS_SERVER) $(if $(FAULTS),-faults $(FAULTS))

loadtest-faults: $(NATS_SERVER)
	cd loadtest && go run . -profile faults $(FAULT_FLAGS) $(LOADTEST_FLAGS)

loadtest-faults-quick: $(NATS_SERVER)
	cd loadtest && go run . -profile faults-quick $(FAULT_FLAGS) $(LOADTEST_FLAGS)

# The cluster scenarios start their clusters themselves, on ports the
# kernel hands out, so they run beside a tools/cluster cluster without
# touching it (redis-server and redis-cli from the PATH).
CLUSTER_FAULTS := cluster-kill-nats-node,cluster-kill-nats-node-fetch,cluster-kill-redis-master,cluster-kill-redis-master-wait,cluster-redis-master-empty

cluster-faults: $(NATS_SERVER)
	cd loadtest && go run . -profile faults -faults $(CLUSTER_FAULTS) -nats-server $(NATS_SERVER) -out out/cluster-faults $(LOADTEST_FLAGS)

# The emptied master alone, in the short profile (about 90 s): the loss
# only the epoch markers per hash slot see, which CI runs.
cluster-faults-quick: $(NATS_SERVER)
	cd loadtest && go run . -profile faults-quick -faults cluster-redis-master-empty -nats-server $(NATS_SERVER) -out out/cluster-faults-quick $(LOADTEST_FLAGS)

# Every fuzz target, as package:Target; each runs for FUZZTIME.
FUZZ_TARGETS := ./pkg/events:FuzzDecode ./pkg/events:FuzzDecodeMatchesReference ./pkg/events:FuzzParseTimeUTC ./pkg/events:FuzzDecodeReplyBody \
	./pkg/events:FuzzCheckNumber ./pkg/events:FuzzDecodeRequest ./pkg/events:FuzzWatchChange ./pkg/events:FuzzDecodeBatchRequest ./pkg/events:FuzzQuickReaders \
	./services/notifier:FuzzDecodeTaskPayload ./services/notifier/internal/token:FuzzCheck \
	./services/auth:FuzzLoadKeysFile ./services/auth/internal/policy:FuzzCompile ./services/auth/internal/apikey:FuzzParse \
	./cmd/allot:FuzzParseFrom ./loadtest:FuzzParseNoticeTask

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== fuzz $$name in $$pkg ($(FUZZTIME))"; \
		go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done
	@echo "== fuzz FuzzDashboard in ./deploy/k8s/promcheck ($(FUZZTIME))"
	cd deploy/k8s/promcheck && GOWORK=off go test -run '^$$' -fuzz '^FuzzDashboard$$' -fuzztime $(FUZZTIME) .

lint:
	@tools/check-nats-pin $(MODULES)
	@for m in $(MODULES); do \
		echo "== vet $$m"; \
		(cd $$m && go vet ./... && go vet -tags integration ./...); \
	done
	@for m in $(ALONE_MODULES); do \
		echo "== vet $$m (outside go.work)"; \
		(cd $$m && GOWORK=off go vet ./...); \
	done
	@unformatted=$$(gofmt -l $(MODULES)); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi

fmt:
	gofmt -w $(MODULES)

# pkg/mutex/bench is tidied with -e: redsync's own tests import a module
# the proxy refuses, which its benchmarks never build.
tidy:
	@for m in $(MODULES) $(ALONE_MODULES) ./tools; do \
		echo "== tidy $$m"; \
		case $$m in */mutex/bench) flags=-e;; *) flags=;; esac; \
		(cd $$m && GOWORK=off go mod tidy $$flags); \
	done

# Each module must build alone, without go.work.
build:
	@for m in $(MODULES) $(ALONE_MODULES); do echo "== build $$m"; (cd $$m && GOWORK=off go build ./...); done
	go build -ldflags '$(LDFLAGS)' -o bin/allot ./cmd/allot

clean:
	rm -rf bin .bin

# Container images, one per service that has a services/<name>/cmd/<name>
# (Dockerfile; needs a Docker engine). make images IMAGE_TAG=0.2.0; the
# binaries report IMAGE_TAG as their version, and REVISION and MODIFIED.
IMAGE_REGISTRY ?= ghcr.io/allot
IMAGE_TAG ?= 0.1.0
SERVICES := $(notdir $(patsubst %/,%,$(dir $(wildcard services/*/cmd/*/main.go))))

.PHONY: images
images:
	@for s in $(SERVICES); do \
		echo "== image $(IMAGE_REGISTRY)/$$s:$(IMAGE_TAG)"; \
		docker build --build-arg SERVICE=$$s --build-arg VERSION=$(IMAGE_TAG) \
			--build-arg REVISION=$(REVISION) --build-arg MODIFIED=$(MODIFIED) \
			-t $(IMAGE_REGISTRY)/$$s:$(IMAGE_TAG) .; \
	done
