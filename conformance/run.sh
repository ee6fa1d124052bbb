#!/usr/bin/env bash
# `make conformance`: the upstream Gateway API conformance suite against the
# local cluster. Builds what is missing, starts the cluster (with the node
# agent), installs Gatewright, runs the suite, prints its summary and tears
# everything down, also on failure or Ctrl-C.
#
# GWR_INFRA picks how Gatewright runs:
#   kubernetes (default, `make conformance`): `helm install charts/gatewright`
#     into the cluster: two controller pods with leader election, and per
#     Gateway an Envoy Deployment and LoadBalancer Service they provision,
#     programmed over mutual-TLS xDS. This is the mode users run.
#   host (`make conformance-host`): one controller process inside the
#     cluster's network namespace with --infrastructure host (Envoy child
#     processes on 127.0.1.x), which is what standalone users run.
#
# Extra arguments go to the suite (e.g. -run-test=HTTPRouteSimpleSameNamespace).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
LOG=conformance/reports/last-run.log
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

GWR_INFRA=${GWR_INFRA:-kubernetes}
if [[ $GWR_INFRA != kubernetes && $GWR_INFRA != host ]]; then
  echo "GWR_INFRA must be kubernetes or host, not $GWR_INFRA" >&2
  exit 2
fi

# shellcheck source=conformance/lib.sh
. conformance/lib.sh
cluster_down_on_exit

started=$SECONDS
log "building (only what is missing)"
"$CLUSTER" build
cargo build -p gatewright -p gatewright-node-agent
# The suite runs inside the cluster's network namespace, which has no route
# out, so its modules are fetched and the test binary built out here.
SUITE_BIN=$PWD/.tools/k8s/bin/conformance.test
(cd conformance/suite && go test -c -o "$SUITE_BIN" .)
"$CLUSTER" up

GWR_LOG=conformance/reports/gatewright.log
mkdir -p conformance/reports
SUITE_FLAGS=()
case $GWR_INFRA in
kubernetes)
  before_down() {
    "$CLUSTER" exec kubectl -n gatewright-system logs -l app.kubernetes.io/name=gatewright \
      --all-containers --prefix --timestamps --tail=-1 >"$GWR_LOG" 2>&1 || true
    if (($1 != 0)); then
      log "last lines of $GWR_LOG"
      tail -n 20 "$GWR_LOG" || true
      "$CLUSTER" exec kubectl get pods -A -o wide 2>&1 | tail -n 30 || true
    fi
    rm -rf "${HELM_HOME_DIR:-}"
  }
  # The chart as a user installs it (the node agent maps its controller
  # image to target/debug/gatewright and the Envoy image to the pinned
  # Envoy). The suite creates the GatewayClass.
  helm_install_gatewright --set gatewayClass.create=false
  "$CLUSTER" exec kubectl -n gatewright-system get pods -o wide
  # The harness's load-balancer pool (node agent): an address of its
  # reserved range is usable when asked for, one outside the pool is not.
  SUITE_FLAGS+=(-usable-address=10.245.0.200 -unusable-address=10.246.0.1)
  ;;
host)
  "$CLUSTER" crds
  # Gatewright runs inside the cluster's network namespace with host
  # infrastructure: one Envoy child process per Gateway on a 127.0.1.x
  # address there, which is what the suite reads from Gateway
  # status.addresses and sends traffic to. Pods' 10.244.x.y addresses are
  # reachable from there.
  GWR_STATE=$PWD/.tools/k8s/run/gatewright
  mkdir -p "$GWR_STATE"
  "$CLUSTER" exec kubectl create namespace gatewright-system >/dev/null
  log "starting gatewright controller --infrastructure host (log in $GWR_LOG)"
  "$CLUSTER" exec "$PWD/target/debug/gatewright" controller \
    --infrastructure host --namespace gatewright-system \
    --xds-address 127.0.0.1:18000 --admin-address 127.0.0.1:18001 \
    --state-dir "$GWR_STATE" --envoy "$PWD/.tools/envoy/bin/envoy" \
    >"$GWR_LOG" 2>&1 </dev/null &
  gwr_pid=$!
  # The controller lives in the cluster's namespace, so `cluster.sh down`
  # stops it with everything else; stopping it first lets it drain its Envoys.
  before_down() {
    if kill -0 "$gwr_pid" 2>/dev/null; then
      kill -TERM "$gwr_pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$gwr_pid" 2>/dev/null || break; sleep 0.2; done
    fi
    if (($1 != 0)); then
      log "last lines of $GWR_LOG"
      tail -n 20 "$GWR_LOG" || true
    fi
  }
  ;;
esac

mkdir -p conformance/reports
log "running the suite (output in $LOG)"
suite_status=0
(cd conformance/suite && "../../$CLUSTER" exec "$SUITE_BIN" -test.v -test.count=1 -test.timeout=90m \
  -version="$VERSION" "${SUITE_FLAGS[@]}" "$@") >"$LOG" 2>&1 || suite_status=$?

log "summary"
grep -E '^(--- |=== RUN   TestConformance/|ok |FAIL|PASS)|GatewayClass .* not Accepted|Summary|Passed|Failed|Skipped' "$LOG" |
  grep -v '^=== RUN' | tail -n 60 || true
report=$(ls -t conformance/reports/*-report.yaml 2>/dev/null | head -n 1 || true)
if [[ -n $report && $report -nt $LOG ]]; then
  log "report: $report"
fi
log "suite exit status $suite_status ($GWR_INFRA infrastructure) after $((SECONDS - started)) s"
exit "$suite_status"
