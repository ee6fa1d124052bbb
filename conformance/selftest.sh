#!/usr/bin/env bash
# Self-test of the conformance harness, without Gatewright: the local
# cluster and the node agent must run the suite's base manifests the way a
# real cluster would.
#
#   conformance/selftest.sh
#
# 1. builds what is missing, starts the cluster (with the node agent) and
#    installs the CRDs;
# 2. applies the suite's base manifests (plus the TLS Secrets the suite
#    would create) and waits for every pod to be Ready;
# 3. asks every echo pod, at its pod IP, who it is (over HTTP, or a UDP
#    datagram for v1.7.0's udp-echo): the answer must name that pod and its
#    namespace;
# 4. reads a pod's log through the API server (pods/log -> the agent);
# 5. Service networking from gwr-conf and from inside pods: ClusterIP
#    (load balancing, hairpin), a Service without endpoints refusing,
#    cluster DNS (full and short names, TCP, the kube-dns ClusterIP, fast
#    negative answers), LoadBalancer
#    addresses (automatic, explicit usable, explicit unusable with its
#    Event), rules gone with the Service;
# 6. deletes a namespace and waits for it to finalise;
# then tears everything down (also on failure).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
GATEWAY_API_VERSION=v1.7.0
WAIT=300s # per wait; the first start of ~30 pods on 2 cores is slow

# shellcheck source=conformance/lib.sh
. conformance/lib.sh
fail() {
  printf 'SELFTEST FAILED: %s\n' "$*" >&2
  exit 1
}
k() { "$CLUSTER" exec kubectl "$@"; }

work=$(mktemp -d)
before_down() {
  rm -rf "$work"
  if (($1 != 0)); then
    log "diagnostics"
    k get pods -A -o wide 2>&1 | tail -n 40 || true
    tail -n 30 .tools/k8s/run/*agent*.log 2>/dev/null || true
  fi
}
cluster_down_on_exit

started=$SECONDS
log "building (only what is missing)"
"$CLUSTER" build
cargo build -p gatewright-node-agent
"$CLUSTER" up
"$CLUSTER" crds

# The suite's base manifests, from the conformance module of our version.
export GOFLAGS=-modcacherw
(cd conformance/suite && go mod download sigs.k8s.io/gateway-api/conformance)
module_dir=$(cd conformance/suite && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
manifests=$module_dir/base/manifests.yaml
[[ -f $manifests ]] || fail "no base manifests at $manifests"

sed 's/{GATEWAY_CLASS_NAME}/gatewright-selftest/g' "$manifests" >"$work/base.yaml"

log "applying the base manifests and the TLS Secrets the suite would create"
k apply --server-side -f "$work/base.yaml" >/dev/null
for secret in gateway-conformance-infra/tls-checks-certificate \
  gateway-conformance-app-backend/tls-passthrough-checks-certificate \
  gateway-conformance-infra/tls-passthrough-checks-certificate; do
  ns=${secret%%/*}
  name=${secret##*/}
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=$name" \
    -keyout "$work/$name.key" -out "$work/$name.crt" 2>/dev/null
  k -n "$ns" create secret tls "$name" --cert "$work/$name.crt" --key "$work/$name.key" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
done

namespaces=$(k get ns -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep '^gateway-conformance-')
[[ -n $namespaces ]] || fail "the base manifests created no gateway-conformance-* namespace"
log "waiting (up to $WAIT each) for every Deployment to be Available and every pod Ready"
for ns in $namespaces; do
  k -n "$ns" wait --for=condition=Available deployment --all --timeout="$WAIT" >/dev/null ||
    fail "Deployments in $ns did not become Available"
  k -n "$ns" wait --for=condition=Ready pod --all --timeout="$WAIT" >/dev/null ||
    fail "pods in $ns did not become Ready"
done
# namespace, name, pod IP, image, and the names of the first container's
# env vars (comma-joined): gRPC and TCP echo servers do not speak HTTP.
pods=$(k get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{" "}{.status.podIP}{" "}{.spec.containers[0].image}{" "}{.spec.containers[0].env[*].name}{"\n"}{end}' |
  grep '^gateway-conformance-')
log "$(wc -l <<<"$pods") pods Ready"

log "asking every echo pod who it is, at its pod IP"
checked=0
while read -r ns pod ip image env; do
  [[ $image == *echo-basic* ]] || continue
  [[ " $env " == *" GRPC_ECHO_SERVER "* || " $env " == *" TCP_ECHO_SERVER "* ]] && continue
  [[ $ip == 10.244.* ]] || fail "$ns/$pod has pod IP '$ip', not one from 10.244.0.0/16"
  if [[ " $env " == *" UDP_ECHO_SERVER "* ]]; then
    # In UDP mode (v1.7.0's udp-echo) echo-basic answers a datagram on
    # 8080 with the same JSON.
    body=$("$CLUSTER" exec python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"selftest", (sys.argv[1], 8080))
print(s.recv(65535).decode())' "$ip") || fail "$ns/$pod did not answer a datagram at $ip:8080"
  else
    # echo-basic serves HTTP on 3000 and describes the request as JSON.
    body=$("$CLUSTER" exec curl -s --max-time 5 "http://$ip:3000/selftest") ||
      fail "$ns/$pod did not answer at http://$ip:3000"
  fi
  got=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("namespace",""), d.get("pod",""))' <<<"$body") ||
    fail "$ns/$pod answered something that is not echo JSON: $body"
  [[ $got == "$ns $pod" ]] || fail "$ip should be $ns/$pod, but says it is '$got'"
  checked=$((checked + 1))
done <<<"$pods"
((checked > 0)) || fail "no echo-basic pod found"
log "$checked echo pods answered with their own name and namespace"

log "reading a pod's log through the API server"
read -r ns pod _ <<<"$(grep echo-basic <<<"$pods" | head -n 1)"
logs=$(k -n "$ns" logs "$pod" --timestamps --since=1h) || fail "kubectl logs $ns/$pod failed"
[[ -n $logs ]] || fail "kubectl logs $ns/$pod returned nothing"
log "kubectl logs $ns/$pod: $(wc -l <<<"$logs") line(s), e.g. $(head -n 1 <<<"$logs")"

# ------------------------------------------------ Services, DNS, LB ------
# The node agent routes ClusterIPs and LoadBalancer IPs (nftables table
# `ip gwr-svc` in gwr-conf) and serves cluster DNS on the node IP.
NET_NS=gateway-conformance-infra
NET_SVC=infra-backend-v1 # 2 echo pods; port 8080 -> 3000
pod_of() { python3 -c 'import json,sys; print(json.load(sys.stdin).get("pod",""))' 2>/dev/null || true; }
# who URL: the echo pod answering at URL, asked from gwr-conf.
who() { "$CLUSTER" exec curl -s --max-time 5 "$1" | pod_of; }
# pod_pid POD: a process of the pod (echo-basic pods have POD_NAME set).
pod_pid() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "POD_NAME=$1"; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}
# in_pod PID RESOLV_CONF CMD...: CMD in the pod's network namespace with
# the resolv.conf pods get (private mount namespace: nothing leaks out).
in_pod() {
  local pid=$1 resolv=$2
  shift 2
  nsenter --net="/proc/$pid/ns/net" unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$resolv" "$@"
}
pod_who() { in_pod "$1" "$2" curl -s --max-time 5 "$3" | pod_of; } # pid resolv url
# expect_pod WHAT ANSWER: the answer names a pod of $NET_SVC.
expect_pod() {
  [[ $2 == "$NET_SVC"-* ]] || fail "$1: expected a $NET_SVC pod, got '$2'"
  log "  $1 -> $2"
}

log "Service routing: ClusterIP from gwr-conf and from a pod"
cip=$(k -n "$NET_NS" get svc "$NET_SVC" -o jsonpath='{.spec.clusterIP}')
[[ $cip == 10.96.* ]] || fail "$NET_SVC has ClusterIP '$cip'"
expect_pod "gwr-conf -> $cip:8080" "$(who "http://$cip:8080/")"
client_pod=$(k -n "$NET_NS" get pods -l app=infra-backend-v2 -o jsonpath='{.items[0].metadata.name}')
client_pid=$(pod_pid "$client_pod") || fail "no process found for pod $client_pod"
printf 'nameserver 10.244.0.1\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:1\n' \
  "$NET_NS" >"$work/resolv.conf"
printf 'nameserver 10.96.0.10\noptions timeout:2 attempts:1\n' >"$work/resolv-vip.conf"
expect_pod "$client_pod -> $cip:8080" "$(pod_who "$client_pid" "$work/resolv.conf" "http://$cip:8080/")"
# Load balancing: 16 connections from gwr-conf reach both endpoints.
seen=$(for _ in $(seq 1 16); do who "http://$cip:8080/"; done | sort -u | grep -c "^$NET_SVC-") || true
((seen == 2)) || fail "16 connections to $cip:8080 reached $seen distinct endpoint(s), expected 2"
log "  16 connections to $cip:8080 reached both endpoints"
# Hairpin: a pod reaching a Service whose only endpoint is that pod (a
# selectorless Service with a hand-made EndpointSlice).
self_pod=$(k -n "$NET_NS" get pods -l app="$NET_SVC" -o jsonpath='{.items[0].metadata.name}')
self_ip=$(k -n "$NET_NS" get pod "$self_pod" -o jsonpath='{.status.podIP}')
self_pid=$(pod_pid "$self_pod") || fail "no process found for pod $self_pod"
k apply -f - >/dev/null <<EOF || fail "creating Service gwr-hairpin"
apiVersion: v1
kind: Service
metadata: {name: gwr-hairpin, namespace: $NET_NS}
spec:
  ports: [{name: http, port: 80, targetPort: 3000, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: gwr-hairpin-1
  namespace: $NET_NS
  labels: {kubernetes.io/service-name: gwr-hairpin}
addressType: IPv4
ports: [{name: http, port: 3000, protocol: TCP}]
endpoints: [{addresses: ["$self_ip"], conditions: {ready: true}}]
EOF
hp_ip=$(k -n "$NET_NS" get svc gwr-hairpin -o jsonpath='{.spec.clusterIP}')
got=""
for _ in $(seq 1 20); do
  got=$(pod_who "$self_pid" "$work/resolv.conf" "http://$hp_ip/") || true
  [[ -n $got ]] && break
  sleep 0.5
done
[[ $got == "$self_pod" ]] || fail "$self_pod -> gwr-hairpin $hp_ip:80 (only endpoint: itself) answered '$got'"
log "  $self_pod -> gwr-hairpin $hp_ip:80 (hairpin to itself) -> $got"
k -n "$NET_NS" delete svc gwr-hairpin >/dev/null
k -n "$NET_NS" delete endpointslice gwr-hairpin-1 >/dev/null

log "cluster DNS on 10.244.0.1 from a pod: full name, short name, kube-dns ClusterIP"
full=$NET_SVC.$NET_NS.svc.cluster.local
expect_pod "$client_pod -> http://$full:8080" "$(pod_who "$client_pid" "$work/resolv.conf" "http://$full:8080/")"
expect_pod "$client_pod -> http://$NET_SVC:8080" "$(pod_who "$client_pid" "$work/resolv.conf" "http://$NET_SVC:8080/")"
expect_pod "$client_pod -> http://$full:8080 (nameserver 10.96.0.10)" \
  "$(pod_who "$client_pid" "$work/resolv-vip.conf" "http://$full:8080/")"
resolved=$(in_pod "$client_pid" "$work/resolv.conf" getent hosts "$NET_SVC") || fail "getent hosts $NET_SVC failed in a pod"
[[ $resolved == "$cip "* ]] || fail "$NET_SVC resolved to '$resolved', not $cip"
sed 's/^options /options use-vc /' "$work/resolv.conf" >"$work/resolv-tcp.conf"
resolved_tcp=$(in_pod "$client_pid" "$work/resolv-tcp.conf" getent hosts "$full") || fail "getent hosts $full over TCP failed"
[[ $resolved_tcp == "$cip "* ]] || fail "$full resolved over TCP to '$resolved_tcp', not $cip"
start_ns=$(date +%s%N)
if in_pod "$client_pid" "$work/resolv.conf" getent hosts no-such-service >/dev/null; then
  fail "no-such-service resolved"
fi
if in_pod "$client_pid" "$work/resolv.conf" getent hosts example.org >/dev/null; then
  fail "example.org resolved (the cluster DNS must not forward)"
fi
ms=$((($(date +%s%N) - start_ns) / 1000000))
((ms < 3000)) || fail "negative answers took $ms ms"
log "  $NET_SVC -> $resolved (also over TCP); no-such-service and example.org fail fast ($ms ms for both)"

log "a Service without ready endpoints refuses connections"
printf 'apiVersion: v1\nkind: Service\nmetadata: {name: gwr-empty, namespace: %s}\nspec:\n  selector: {app: gwr-nothing}\n  ports: [{port: 80, targetPort: 3000}]\n' \
  "$NET_NS" | k apply -f - >/dev/null || fail "creating Service gwr-empty"
empty_ip=$(k -n "$NET_NS" get svc gwr-empty -o jsonpath='{.spec.clusterIP}')
rc=0
in_pod "$client_pid" "$work/resolv.conf" curl -s -o /dev/null --max-time 3 "http://$empty_ip/" || rc=$?
((rc == 7)) || fail "$client_pod -> gwr-empty $empty_ip:80: curl exit $rc, expected 7 (refused)"
log "  $client_pod -> gwr-empty $empty_ip:80: connection refused"
k -n "$NET_NS" delete svc gwr-empty >/dev/null

log "LoadBalancer Services: pool address, explicit usable and unusable addresses"
lb_svc() { # name [loadBalancerIP]
  printf 'apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\nspec:\n  type: LoadBalancer\n' "$1" "$NET_NS"
  printf '  selector: {app: %s}\n  ports: [{name: http, port: 80, targetPort: 3000, protocol: TCP}]\n' "$NET_SVC"
  if [[ -n ${2:-} ]]; then printf '  loadBalancerIP: %s\n' "$2"; fi
}
{ lb_svc gwr-lb; echo ---; lb_svc gwr-lb-usable 10.245.0.200; echo ---; lb_svc gwr-lb-unusable 10.246.0.1; } |
  k apply -f - >/dev/null 2>&1 || fail "creating the LoadBalancer Services"
lb_ip() { k -n "$NET_NS" get svc "$1" -o jsonpath='{.status.loadBalancer.ingress[0].ip}'; }
for _ in $(seq 1 40); do
  [[ -n $(lb_ip gwr-lb) && -n $(lb_ip gwr-lb-usable) ]] && break
  sleep 0.5
done
ip_auto=$(lb_ip gwr-lb) || true
[[ $ip_auto =~ ^10\.245\.0\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] < 200)) ||
  fail "gwr-lb got '$ip_auto', not an address of 10.245.0.1-199"
[[ $(lb_ip gwr-lb-usable) == 10.245.0.200 ]] || fail "gwr-lb-usable got '$(lb_ip gwr-lb-usable)', not 10.245.0.200"
expect_pod "gwr-conf -> gwr-lb $ip_auto:80" "$(who "http://$ip_auto:80/")"
expect_pod "gwr-conf -> gwr-lb-usable 10.245.0.200:80" "$(who "http://10.245.0.200:80/")"
expect_pod "$client_pod -> gwr-lb $ip_auto:80" "$(pod_who "$client_pid" "$work/resolv.conf" "http://$ip_auto:80/")"
[[ -z $(lb_ip gwr-lb-unusable) ]] || fail "gwr-lb-unusable got an address: $(lb_ip gwr-lb-unusable)"
event=""
for _ in $(seq 1 20); do
  event=$(k -n "$NET_NS" get events -o jsonpath='{.items[0].message}' \
    --field-selector involvedObject.name=gwr-lb-unusable,reason=AllocationFailed,type=Warning) || true
  [[ -n $event ]] && break
  sleep 0.5
done
[[ $event == *10.246.0.1*"not in the pool"* ]] || fail "no AllocationFailed Event for gwr-lb-unusable (got '$event')"
log "  gwr-lb-unusable: no address; Warning AllocationFailed: $event"

log "deleting Service gwr-lb: its rules must go (connection refused, bounded)"
lb_cip=$(k -n "$NET_NS" get svc gwr-lb -o jsonpath='{.spec.clusterIP}')
k -n "$NET_NS" delete svc gwr-lb >/dev/null
gone=0
rc=0
for _ in $(seq 1 20); do
  rc=0
  "$CLUSTER" exec curl -s -o /dev/null --max-time 3 "http://$ip_auto:80/" || rc=$?
  if ((rc == 7)); then
    gone=1
    break
  fi
  sleep 0.5
done
((gone)) || fail "gwr-lb's address $ip_auto still answers or hangs after deletion (curl exit $rc)"
rc=0
"$CLUSTER" exec curl -s -o /dev/null --max-time 3 "http://$lb_cip:80/" || rc=$?
((rc == 7)) || fail "gwr-lb's ClusterIP $lb_cip: curl exit $rc, expected 7 (refused)"
if "$CLUSTER" exec nft list table ip gwr-svc | grep -q 'gwr-lb:'; then
  fail "rules of gwr-lb are still in table ip gwr-svc"
fi
log "  $ip_auto and $lb_cip refuse connections; no gwr-lb rules left"
k -n "$NET_NS" delete svc gwr-lb-usable gwr-lb-unusable >/dev/null

log "deleting namespace gateway-conformance-web-backend and waiting for it to finalise"
k delete namespace gateway-conformance-web-backend --wait=false >/dev/null
k wait --for=delete namespace/gateway-conformance-web-backend --timeout="$WAIT" >/dev/null ||
  fail "namespace gateway-conformance-web-backend did not finalise"

log "SELFTEST PASSED in $((SECONDS - started)) s (Gateway API $GATEWAY_API_VERSION base manifests)"
