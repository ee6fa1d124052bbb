#!/usr/bin/env bash
# Gatewright's Helm chart on the local cluster, run by the node agent.
#
#   conformance/node-agent/chart-smoke.sh
#
# Needs: root, the cluster up with the agent (conformance/cluster.sh up),
# target/debug/gatewright built (cargo build -p gatewright), .tools/helm,
# nsenter, and routing for the kubernetes Service's ClusterIP
# (10.96.0.1:443) inside gwr-conf, which the controller's in-cluster
# configuration uses.
#
# Installs charts/gatewright into gatewright-system (experimental CRDs; an
# upgrade with --reuse-values then creates the GatewayClass), checks both
# controller pods Ready (their /readyz probe on the named port), restarted
# only if they started before the new CRDs were served, one of them holding
# the leader Lease; creates a Gateway and
# checks its Envoy pod runs with the bootstrap and the xDS certificate
# files the bootstrap names visible at their mount paths. Removes what it
# created. Bounded: fails loudly within about 5 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/conformance/cluster.sh"
HELM="$ROOT/.tools/helm/bin/helm"
NS=gatewright-system
GW_NS=gwr-chart-smoke

say() { printf '[chart-smoke] %s\n' "$*" >&2; }
fail() {
  printf '[chart-smoke] FAIL: %s\n' "$*" >&2
  k -n "$NS" get pods -o wide >&2 || true
  local p
  for p in $(k -n "$NS" get pods -o name 2>/dev/null); do
    printf '[chart-smoke] log of %s:\n' "$p" >&2
    k -n "$NS" logs "$p" --tail=30 >&2 || true
  done
  exit 1
}
k() { "$CLUSTER" exec kubectl "$@"; }
helm() { "$CLUSTER" exec "$HELM" "$@"; }

cleanup() {
  k delete namespace "$GW_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  helm uninstall gw -n "$NS" >/dev/null 2>&1 || true
  k delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

[[ -x $ROOT/target/debug/gatewright ]] || fail "target/debug/gatewright is missing (cargo build -p gatewright)"
[[ -x $HELM ]] || fail "$HELM is missing"

say "helm install"
helm install gw "$ROOT/charts/gatewright" -n "$NS" --create-namespace \
  --set crds.channel=experimental >/dev/null
# The first install creates the CRDs; the GatewayClass comes with an upgrade.
helm upgrade gw "$ROOT/charts/gatewright" -n "$NS" --reuse-values >/dev/null

say "waiting for 2 ready controller pods"
n=0
for _ in $(seq 120); do
  n=$(k -n "$NS" get pods -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  ((n >= 2)) && break
  sleep 1
done
k -n "$NS" get pods -o wide
((n >= 2)) || fail "controller pods not ready within 120 s"
# A controller that starts before the API server serves the CRDs the same
# install created exits and is restarted: the only restart accepted.
for p in $(k -n "$NS" get pods -o name); do
  r=$(k -n "$NS" get "$p" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  if ((r > 0)); then
    k -n "$NS" logs "$p" | grep -q 'does not serve gateway.networking.k8s.io' ||
      fail "$p restarted $r time(s), not waiting for the CRDs"
    say "$p restarted $r time(s): it started before the new CRDs were served"
  fi
done

holder=
for _ in $(seq 30); do
  holder=$(k -n "$NS" get lease gatewright-controller -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [[ -n $holder ]] && break
  sleep 1
done
[[ -n $holder ]] || fail "no leader Lease holder within 30 s"
k -n "$NS" get pod "$holder" >/dev/null || fail "Lease holder $holder is not a controller pod"
k -n "$NS" logs "$holder" | grep -q 'became leader' || fail "$holder's log does not say it became leader"
say "leader: $holder"

k get gatewayclass gatewright >/dev/null || fail "no GatewayClass gatewright"
say "creating a Gateway in $GW_NS"
k create namespace "$GW_NS" >/dev/null
k -n "$GW_NS" apply -f - >/dev/null <<'YAML'
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: smoke}
spec:
  gatewayClassName: gatewright
  listeners: [{name: http, port: 80, protocol: HTTP}]
YAML
pod=
for _ in $(seq 90); do
  pod=$(k -n "$GW_NS" get pods -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' | head -1)
  [[ -n $pod ]] && break
  sleep 1
done
k -n "$GW_NS" get deploy,pods -o wide
[[ -n $pod ]] || fail "no running Envoy pod within 90 s"
for _ in $(seq 30); do
  k -n "$GW_NS" logs "$pod" 2>/dev/null | grep -q 'starting main dispatch loop' && break
  sleep 1
done
k -n "$GW_NS" logs "$pod" | grep -q 'starting main dispatch loop' || fail "Envoy did not start: $(k -n "$GW_NS" logs "$pod" | tail -5)"

pid=$(pgrep -f 'envoy --config-path /etc/gatewright/bootstrap/' | head -1 || true)
[[ -n $pid ]] || fail "no Envoy process with the bootstrap path"
files=$(nsenter -t "$pid" -m grep -o '"/etc/gatewright/xds/[^"]*"' /etc/gatewright/bootstrap/envoy.json | tr -d '"' | sort -u)
[[ -n $files ]] || fail "the bootstrap names no file under /etc/gatewright/xds"
for f in $files; do
  nsenter -t "$pid" -m test -s "$f" || fail "$f, named in the bootstrap, is not visible to Envoy"
done
[[ ! -e /etc/gatewright ]] || fail "/etc/gatewright appeared on the host"
say "Envoy $pod runs with its bootstrap; files named inside it visible: $(echo $files)"
say "OK"
