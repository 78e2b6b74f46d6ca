# Load-test targets, included by the root Makefile (paths are relative to the
# repository root). The harness is its own Go module under bench/ so that its
# peer clients (nats.go, HdrHistogram) stay out of the server's dependencies.
#
#   make bench-deps   nats-server into bench/.bin (go install), the naive Mles
#                     forwarder into bench/.bin, redis-server (apt-get, if
#                     missing), bin/mlesd
#   make bench        the standard suite against mlesd, NATS and Redis
#   make profile      fanout against mlesd with a CPU profile, and its top
#
# BENCH_ARGS adds flags to mlesbench, e.g.
#   make bench BENCH_ARGS="--scenarios fanout,pairs --duration 10s --json"

NATS_SERVER_VERSION ?= v2.15.2
BENCH_BIN      := bench/.bin
NATS_SERVER    := $(BENCH_BIN)/nats-server
NAIVE_MLES     := $(BENCH_BIN)/naivemles
BENCH_DURATION ?= 5s
BENCH_ARGS     ?=
PROFILE_DIR    ?= out/profile
PROFILE_SECS   ?= 10
PROFILE_SCENARIO ?= fanout
MLESBENCH      := cd bench && $(GO) run ./cmd/mlesbench --mlesd-bin ../$(BIN) --nats-bin .bin/nats-server --naive-bin .bin/naivemles

.PHONY: bench-deps bench bench-test profile

$(NATS_SERVER):
	mkdir -p $(BENCH_BIN)
	GOBIN=$(CURDIR)/$(BENCH_BIN) $(GO) install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)

$(NAIVE_MLES): bench/cmd/naivemles/main.go
	mkdir -p $(BENCH_BIN)
	cd bench && $(GO) build -o .bin/naivemles ./cmd/naivemles

bench-deps: $(NATS_SERVER) $(NAIVE_MLES) ## install nats-server and naivemles (bench/.bin) and redis-server (apt), build bin/mlesd
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y redis-server || { $$SUDO apt-get update && $$SUDO apt-get install -y redis-server; }; }
	$(MAKE) build

BENCH_SERVERS  ?= mlesd,naive,nats,nats-raw,redis

bench: bench-deps ## standard suite: every scenario against mlesd, the naive forwarder, NATS and Redis (BENCH_DURATION each)
	$(MLESBENCH) --servers $(BENCH_SERVERS) --duration $(BENCH_DURATION) $(BENCH_ARGS)

bench-test: ## the harness's own tests (integration part needs bench-deps)
	cd bench && $(GO) vet ./... && $(GO) test -count=1 ./...

profile: bench-deps ## CPU profile of mlesd under fanout (via --pprof), then its top entries
	mkdir -p $(PROFILE_DIR)
	$(MLESBENCH) --servers mlesd --scenarios $(PROFILE_SCENARIO) --duration $(PROFILE_SECS)s \
	  --pprof-out ../$(PROFILE_DIR)/$(PROFILE_SCENARIO).cpu.pprof $(BENCH_ARGS)
	$(GO) tool pprof -top -nodecount=30 $(BIN) $(PROFILE_DIR)/$(PROFILE_SCENARIO).cpu.pprof | head -40
	@echo "full profile: $(GO) tool pprof -http=127.0.0.1:8080 $(BIN) $(PROFILE_DIR)/$(PROFILE_SCENARIO).cpu.pprof"
