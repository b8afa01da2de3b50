# allot's Makefile: every target runs over every module of the workspace.
#
#   make run          start the whole system in one process (allot dev)
#   make test         unit tests, then the integration tests against the real
#                     Redis and NATS (skipped when none answers, unless
#                     ALLOT_REQUIRE_INTEGRATION=1), all with -race
#   make bench        benchmarks, against the local NATS and Redis when they run
#   make lint         go vet and a gofmt check
#   make loadtest     the 60-second load test of the whole stack, with raw
#                     baselines and the exactness check (report in loadtest/out/)
#   make loadtest-quick  the same in 10 seconds, as CI runs it
#   make fmt | tidy | build | fuzz

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Every module in go.work, as ./path (the tools module is kept out).
MODULES := $(shell go list -m -f '{{.Dir}}' | sed "s|^$(CURDIR)|.|")
PKGS := $(addsuffix /...,$(MODULES))

BIN := $(CURDIR)/.bin
GOTESTSUM := $(BIN)/gotestsum
TESTFLAGS ?= -race -count=1
FUZZTIME ?= 30s
BENCHTIME ?= 1s

# Real servers for the integration tests and benchmarks.
export ALLOT_TEST_NATS_URL ?= nats://127.0.0.1:4222
export ALLOT_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test test-unit test-integration bench lint fmt tidy build fuzz clean modules loadtest loadtest-quick

run:
	go run ./cmd/allot dev

modules:
	@printf '%s\n' $(MODULES)

$(GOTESTSUM): tools/go.mod tools/go.sum
	cd tools && GOWORK=off go build -o $(GOTESTSUM) gotest.tools/gotestsum

test: test-unit test-integration

test-unit: $(GOTESTSUM)
	@echo "== unit tests ($(words $(MODULES)) modules)"
	$(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) $(PKGS)

test-integration: $(GOTESTSUM)
	@echo "== integration tests against NATS $(ALLOT_TEST_NATS_URL) and Redis $(ALLOT_TEST_REDIS_URL)"
	$(GOTESTSUM) --format pkgname-and-test-fails -- $(TESTFLAGS) -tags integration -run '^TestIntegration' $(PKGS)

bench:
	ALLOT_BENCH_NATS_URL=$${ALLOT_BENCH_NATS_URL-$(ALLOT_TEST_NATS_URL)} \
	ALLOT_BENCH_REDIS_URL=$${ALLOT_BENCH_REDIS_URL-$(ALLOT_TEST_REDIS_URL)} \
	go test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

loadtest:
	cd loadtest && go run . --profile default

loadtest-quick:
	cd loadtest && go run . --profile quick

# Every fuzz target, as package:Target; each runs for FUZZTIME.
FUZZ_TARGETS := ./pkg/events:FuzzDecode ./pkg/events:FuzzDecodeMatchesReference ./pkg/events:FuzzParseTimeUTC ./pkg/events:FuzzDecodeReplyBody \
	./services/notifier:FuzzDecodeTaskPayload ./services/notifier/internal/token:FuzzCheck

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== fuzz $$name in $$pkg ($(FUZZTIME))"; \
		go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

lint:
	@for m in $(MODULES); do \
		echo "== vet $$m"; \
		(cd $$m && go vet ./... && go vet -tags integration ./...); \
	done
	@unformatted=$$(gofmt -l $(MODULES)); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi

fmt:
	gofmt -w $(MODULES)

# pkg/mutex/bench is tidied with -e: redsync's own tests import a module
# the proxy refuses, which its benchmarks never build.
tidy:
	@for m in $(MODULES) ./tools; do \
		echo "== tidy $$m"; \
		case $$m in */mutex/bench) flags=-e;; *) flags=;; esac; \
		(cd $$m && GOWORK=off go mod tidy $$flags); \
	done

# Each module must build alone, without go.work.
build:
	@for m in $(MODULES); do echo "== build $$m"; (cd $$m && GOWORK=off go build ./...); done
	go build -o bin/allot ./cmd/allot

clean:
	rm -rf bin .bin

# Container images, one per service that has a services/<name>/cmd/<name>
# (Dockerfile; needs a Docker engine). make images IMAGE_TAG=0.2.0
IMAGE_REGISTRY ?= ghcr.io/allot
IMAGE_TAG ?= 0.1.0
SERVICES := $(notdir $(patsubst %/,%,$(dir $(wildcard services/*/cmd/*/main.go))))

.PHONY: images
images:
	@for s in $(SERVICES); do \
		echo "== image $(IMAGE_REGISTRY)/$$s:$(IMAGE_TAG)"; \
		docker build --build-arg SERVICE=$$s -t $(IMAGE_REGISTRY)/$$s:$(IMAGE_TAG) .; \
	done
