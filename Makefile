# mlesd: build, run and test. Needs only Go (1.26+) on PATH.
GO       ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN      := bin/mlesd
FUZZTIME ?= 30s
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Every fuzz target as package:Target (the stream parser is the engine's).
FUZZ_TARGETS := ./codec:FuzzParseHeader ./codec:FuzzDecodeTriplet ./codec:FuzzDecodeResync \
                ./engine:FuzzStreamParser

STATICCHECK_VERSION ?= v0.8.2
STATICCHECK := $(CURDIR)/bin/tools/staticcheck

.PHONY: all build run test test-short vet lint fuzz soak microbench clean help

all: build

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build bin/mlesd
	$(GO) build -trimpath -o $(BIN) ./cmd/mlesd

run: build ## build and start mlesd on [::]:8077 (dual stack) with default settings
	./$(BIN) $(ARGS)

vet:
	$(GO) vet ./...

$(STATICCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: vet $(STATICCHECK) ## go vet and staticcheck (installed into bin/tools)
	$(STATICCHECK) ./...

test: lint ## vet, staticcheck, then every test with the race detector (and the bench module's unit tests)
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'Alloc' ./codec ./router ./engine  # allocation counts need a build without -race
	@if [ -f bench/go.mod ]; then cd bench && $(GO) vet ./... && $(GO) test -count=1 -timeout 10m ./...; fi

test-short: ## quick tests without the race detector
	$(GO) test -count=1 ./...

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
	  $(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

SOAK_DURATION ?= 30m
soak: ## the hostile soak against the real binary for SOAK_DURATION (default 30m); not in CI
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -tags soak -count=1 -run TestSoak -v -timeout 2h ./internal/hostile

microbench: ## go test benchmarks of codec, router and engine with allocations
	$(GO) test -run='^$$' -bench=. -benchmem ./codec ./router ./engine

clean:
	rm -rf bin

-include bench/bench.mk
