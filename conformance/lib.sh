# Shared by run.sh and selftest.sh (sourced, not run): logging, and tearing
# the local cluster down however the script ends.

log() { printf '==> %s\n' "$*"; }

# Tears the cluster down when the script exits, keeping its exit status.
# A function `before_down STATUS`, if the script defines one, runs first.
cluster_down_on_exit() {
  trap _cluster_down EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

_cluster_down() {
  local status=$?
  trap - EXIT INT TERM
  if declare -F before_down >/dev/null; then before_down "$status" || true; fi
  log "tearing the cluster down"
  conformance/cluster.sh down >/dev/null 2>&1 || conformance/cluster.sh down || true
  exit "$status"
}

# Installs charts/gatewright into the running cluster as release
# `gatewright` in gatewright-system (2 controller replicas, experimental
# CRDs), waiting for the controller pods; extra arguments go to helm.
# Builds the pinned Helm if missing. Helm's own files stay in $HELM_HOME_DIR
# (a temporary folder the caller removes), never in $HOME.
helm_install_gatewright() {
  HELM=$PWD/.tools/helm/bin/helm
  [[ -x $HELM ]] || bash charts/check.sh --helm-only
  HELM_HOME_DIR=${HELM_HOME_DIR:-$(mktemp -d)}
  export HELM_CACHE_HOME=$HELM_HOME_DIR/cache HELM_CONFIG_HOME=$HELM_HOME_DIR/config \
    HELM_DATA_HOME=$HELM_HOME_DIR/data
  log "helm install charts/gatewright (2 replicas, experimental CRDs) $*"
  conformance/cluster.sh exec "$HELM" install gatewright charts/gatewright \
    --namespace gatewright-system --create-namespace \
    --set crds.channel=experimental --wait --timeout 5m "$@" >/dev/null
}
