#!/usr/bin/env bash
# `make conformance-kind`: the same suite run as `make conformance`, on a kind
# cluster, for people who have Docker. Creates the cluster, installs the CRDs,
# runs the suite, prints its summary and deletes the cluster (also on failure
# or Ctrl-C). Extra arguments go to the suite.
#
# The project's own machines have no Docker, so this script is not exercised
# there; `make conformance` is the reference run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
KIND_VERSION=v0.33.0
BIN=$ROOT/.tools/k8s/bin
CLUSTER_NAME=gatewright-conformance
KUBECONFIG_FILE=$ROOT/.tools/kind/kubeconfig
LOG=conformance/reports/last-run.log
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

log() { printf '==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

command -v docker >/dev/null || die "docker is needed for kind (without Docker, use 'make conformance')"
docker info >/dev/null 2>&1 || die "'docker info' fails: is the Docker daemon running and reachable?"
command -v go >/dev/null || die "go is needed (to build kind and to run the suite)"

mkdir -p "$BIN" "$(dirname "$KUBECONFIG_FILE")" conformance/reports
if [[ ! -x $BIN/kind ]] || ! "$BIN/kind" version | grep -q "$KIND_VERSION"; then
  log "building kind $KIND_VERSION"
  GOBIN=$BIN go install "sigs.k8s.io/kind@$KIND_VERSION"
fi
if [[ ! -x $BIN/kubectl ]]; then
  log "building kubectl"
  conformance/cluster.sh build
fi

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  log "deleting kind cluster $CLUSTER_NAME"
  "$BIN/kind" delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  rm -f "$KUBECONFIG_FILE"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
log "creating kind cluster $CLUSTER_NAME"
"$BIN/kind" create cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
export KUBECONFIG=$KUBECONFIG_FILE
"$BIN/kubectl" apply --server-side -k crds/gateway-api-v1.7.0/experimental >/dev/null
"$BIN/kubectl" wait --for condition=Established --timeout 60s crd --all >/dev/null
log "Gateway API v1.7.0 experimental CRDs installed"

# Gatewright itself is installed in a cluster by its Helm chart, which does
# not exist yet (issue 6): until then the suite stops at the GatewayClass wait.
log "running the suite (output in $LOG)"
suite_status=0
(cd conformance/suite && go test -timeout 90m -count=1 -v . -args -version="$VERSION" "$@") \
  >"$LOG" 2>&1 || suite_status=$?
log "summary"
grep -E '^(--- |ok |FAIL|PASS)|GatewayClass .* not Accepted' "$LOG" | tail -n 60 || true
log "suite exit status $suite_status after $((SECONDS - started)) s"
exit "$suite_status"
