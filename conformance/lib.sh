# shellcheck shell=bash
# Shared by the conformance scripts (sourced, not run): logging, tearing
# the local cluster down however the script ends, installing Gatewright
# with Helm and a few operations on it.

# The suite and harness modules need Go 1.27 (see conformance/README.md).
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"

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

# ---------------------------------------------------------------------------
# Gatewright installed in the running cluster (helm-e2e.sh, chaos.sh). The
# caller defines `k` (kubectl inside gwr-conf) and `fail MESSAGE` (exits).

# The chart's first-install path: helm_install_gatewright (extra arguments
# go to helm), then `helm upgrade --reuse-values`, which adds the
# GatewayClass; waits for it to be Accepted and checks that both controller
# replicas run. Sets `replicas` (their pod names, one a line).
install_gatewright_with_class() {
  helm_install_gatewright "$@"
  log "helm upgrade --reuse-values (the first install's second step: the GatewayClass)"
  conformance/cluster.sh exec "$HELM" upgrade gatewright charts/gatewright --namespace gatewright-system \
    --reuse-values --wait --timeout 5m >/dev/null
  k wait gatewayclass/gatewright --for=condition=Accepted --timeout=180s >/dev/null ||
    fail "GatewayClass gatewright not Accepted"
  replicas=$(controller_pods)
  (($(wc -l <<<"$replicas") == 2)) || fail "expected 2 running controller pods, got: $replicas"
  log "controller pods: $(tr '\n' ' ' <<<"$replicas")"
}

# The running controller pods, one name a line.
controller_pods() {
  k -n gatewright-system get pods -l app.kubernetes.io/name=gatewright \
    -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}'
}

# The echo image of the suite's base manifests (the node agent maps it to
# echo-basic), read from the conformance module so no image is spelled here.
echo_basic_image() {
  local module_dir image
  (cd conformance/suite && GOFLAGS=-modcacherw go mod download sigs.k8s.io/gateway-api/conformance)
  module_dir=$(cd conformance/suite && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
  image=$(sed -n 's/^ *image: *\([^ ]*echo-basic[^ ]*\).*/\1/p' "$module_dir/base/manifests.yaml" | head -n 1)
  [[ -n $image ]] || fail "no echo-basic image in the base manifests"
  printf '%s\n' "$image"
}

# The Envoy process of an Envoy pod (the node agent gives each pod's
# processes its name as HOSTNAME); none or several are printed as found.
envoy_pid_of() { # $1: pod name
  local p
  for p in $(pgrep -f -- '--config-path /etc/gatewright/bootstrap/' || true); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "HOSTNAME=$1"; then echo "$p"; fi
  done
}

# Kills the leader controller's process (SIGKILL) and deletes its pod, then
# waits (bounded) until a running replica other than it holds the Lease:
# the survivor or the killed pod's replacement, which the Deployment makes
# at once and which races the survivor for the expired Lease (each checks
# every third of the lease duration, timing it from when it first saw the
# last renewal). Sets `leader` and `holder`.
kill_leader() {
  local lease=gatewright-controller pods pid deadline survivor
  pods=$(controller_pods)
  leader=$(k -n gatewright-system get lease "$lease" -o jsonpath='{.spec.holderIdentity}')
  grep -qx "$leader" <<<"$pods" || fail "Lease holder '$leader' is not a running controller pod ($(tr '\n' ' ' <<<"$pods"))"
  survivor=$(grep -vx "$leader" <<<"$pods" || true)
  pid=$(pgrep -f -- "--identity=$leader( |$)" || true)
  [[ $(wc -w <<<"$pid") == 1 ]] || fail "expected one process of $leader, found '$pid'"
  log "killing the leader $leader (pid $pid) with SIGKILL and deleting its pod"
  kill -KILL "$pid"
  k -n gatewright-system delete pod "$leader" --grace-period=0 --force --wait=false >/dev/null 2>&1
  deadline=$((SECONDS + 90))
  while :; do
    holder=$(k -n gatewright-system get lease "$lease" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
    if [[ -n $holder && $holder != "$leader" ]] &&
      [[ $(k -n gatewright-system get pod "$holder" -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]]; then
      break
    fi
    ((SECONDS < deadline)) || fail "the Lease is held by '$holder', not by a running replica other than $leader"
    sleep 1
  done
  if [[ -n $survivor && $holder == "$survivor" ]]; then
    log "the surviving replica $holder took the Lease"
  else
    log "$holder, which replaced the killed leader, took the Lease"
  fi
}
