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
