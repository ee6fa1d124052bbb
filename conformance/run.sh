#!/usr/bin/env bash
# `make conformance`: the upstream Gateway API conformance suite against the
# local cluster. Builds what is missing, starts the cluster (with the node
# agent), installs the CRDs, runs the suite, prints its summary and tears
# everything down, also on failure or Ctrl-C.
#
# Extra arguments go to the suite (e.g. -run-test=HTTPRouteSimpleSameNamespace).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
LOG=conformance/reports/last-run.log
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

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
"$CLUSTER" crds

# Gatewright's Kubernetes provider is not written yet, so nothing will
# accept the GatewayClass and the suite stops at that wait.
log "Gatewright has no Kubernetes provider yet: the suite will wait for GatewayClass gatewright and stop"

mkdir -p conformance/reports
log "running the suite (output in $LOG)"
suite_status=0
(cd conformance/suite && "../../$CLUSTER" exec "$SUITE_BIN" -test.v -test.count=1 -test.timeout=90m \
  -version="$VERSION" "$@") >"$LOG" 2>&1 || suite_status=$?

log "summary"
grep -E '^(--- |=== RUN   TestConformance/|ok |FAIL|PASS)|GatewayClass .* not Accepted|Summary|Passed|Failed|Skipped' "$LOG" |
  grep -v '^=== RUN' | tail -n 60 || true
report=$(ls -t conformance/reports/*-report.yaml 2>/dev/null | head -n 1 || true)
if [[ -n $report && $report -nt $LOG ]]; then
  log "report: $report"
fi
log "suite exit status $suite_status after $((SECONDS - started)) s"
exit "$suite_status"
