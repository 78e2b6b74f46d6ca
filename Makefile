# mlesd: build, run and test. Needs only Go (1.26+) on PATH.
GO       ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN      := bin/mlesd
FUZZTIME ?= 30s
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# mlesd --version prints these.
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# make install: PREFIX/bin/mlesd, the systemd unit and an example config.
# DESTDIR for staged installs (packaging); the unit is not enabled.
PREFIX   ?= /usr/local
DESTDIR  ?=
SYSTEMD_DIR ?= /etc/systemd/system
CONF_DIR ?= /etc/mlesd
# Every fuzz target as package:Target (the stream parser is the engine's).
FUZZ_TARGETS := ./codec:FuzzParseHeader ./codec:FuzzDecodeTriplet ./codec:FuzzDecodeResync \
                ./engine:FuzzStreamParser ./gateway:FuzzWebSocketMessage \
                ./gateway:FuzzDecodePairMatchesDecodeTriplet ./client:FuzzScanTriplet ./client:FuzzFrameReader \
                ./upgrade:FuzzDecodeOffer ./upgrade:FuzzDecodeReply ./upgrade:FuzzDecodeCommit \
                ./upgrade:FuzzDecodeConnState ./upgrade:FuzzDecodeConnBatch ./upgrade:FuzzDecodeChannelState ./upgrade:FuzzDecodeChannelBatch ./upgrade:FuzzDecodeChunk \
                ./upgrade:FuzzDecodeTotals ./upgrade:FuzzTransferStream ./upgrade:FuzzSplitFrames

STATICCHECK_VERSION ?= v0.8.2
STATICCHECK := $(CURDIR)/bin/tools/staticcheck

.PHONY: all build run test test-short vet lint fuzz soak wan microbench install uninstall docker man clean help

all: build

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build bin/mlesd (static, version and commit stamped) and the bin/mles client
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/mlesd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/mles ./cmd/mles

install: build ## install bin/mlesd to PREFIX/bin, the systemd unit and /etc/mlesd/mlesd.toml (kept if present); then see README, "Install as a service"
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/mlesd
	install -D -m 0644 deploy/mlesd.service $(DESTDIR)$(SYSTEMD_DIR)/mlesd.service
	sed -i 's|/usr/local/bin/mlesd|$(PREFIX)/bin/mlesd|' $(DESTDIR)$(SYSTEMD_DIR)/mlesd.service
	@if [ -e $(DESTDIR)$(CONF_DIR)/mlesd.toml ]; then echo "keeping $(DESTDIR)$(CONF_DIR)/mlesd.toml"; \
	else install -D -m 0644 deploy/mlesd.toml $(DESTDIR)$(CONF_DIR)/mlesd.toml; fi
	@echo "installed; as root: systemctl daemon-reload && systemctl enable --now mlesd"

man: build ## write man/mlesd.1 and man/mles.1 from the programs' --help (read with man -l man/mlesd.1)
	$(GO) run .ci/genman.go -bin $(BIN) -o man/mlesd.1
	$(GO) run .ci/genman.go -bin bin/mles -o man/mles.1 -sub pub,sub,chat,bench,proxy,completion

uninstall: ## remove what install put in place (the config file stays)
	rm -f $(DESTDIR)$(PREFIX)/bin/mlesd $(DESTDIR)$(SYSTEMD_DIR)/mlesd.service

docker: ## build the container image mlesd:$(VERSION) from deploy/Dockerfile
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t mlesd:$(VERSION) .

run: build ## build and start mlesd on [::]:8077 (dual stack) with default settings
	./$(BIN) $(ARGS)

vet:
	$(GO) vet ./...

$(STATICCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: vet $(STATICCHECK) ## gofmt, go vet and staticcheck (installed into bin/tools)
	@unformatted=$$("$$($(GO) env GOROOT)/bin/gofmt" -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "not gofmt-formatted (run gofmt -w):"; echo "$$unformatted"; exit 1; fi
	$(STATICCHECK) ./...

test: lint ## vet, staticcheck, then every test with the race detector (and the bench module's unit tests); ends with the skipped tests and why
	GO=$(GO) $(GO) run .ci/gotest.go -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'Alloc' ./codec ./router ./engine  # allocation counts need a build without -race
	@if [ -f bench/go.mod ]; then cd bench && $(GO) vet ./... && $(GO) test -count=1 -timeout 10m ./...; fi

test-short: ## quick tests without the race detector
	$(GO) test -count=1 ./...

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  .ci/fuzz-target $(GO) $${t%%:*} $${t##*:} $(FUZZTIME); \
	done

SOAK_DURATION ?= 30m
soak: ## the hostile soaks (one server, then two peered) against the real binary, SOAK_DURATION each (default 30m); not in CI
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -tags soak -count=1 -run TestSoak -v -timeout 2h ./internal/hostile

wan: ## the WAN fault tests of peering, in network namespaces made for them (root; installs iproute2 with apt-get when missing)
	@command -v ip >/dev/null 2>&1 || (apt-get update && apt-get install -y iproute2)
	MLESD_WAN=1 $(GO) test -race -count=1 -run 'TestPeeringWAN' -v -timeout 5m ./peering

microbench: ## go test benchmarks of codec, router and engine with allocations
	$(GO) test -run='^$$' -bench=. -benchmem ./codec ./router ./engine

clean:
	rm -rf bin man

-include bench/bench.mk
