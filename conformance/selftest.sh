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
# 3. asks every echo pod, at its pod IP, who it is: the answer must name
#    that pod and its namespace;
# 4. reads a pod's log through the API server (pods/log -> the agent);
# 5. deletes a namespace and waits for it to finalise;
# then tears everything down (also on failure).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
GATEWAY_API_VERSION=v1.5.1
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
  # echo-basic serves HTTP on 3000 and describes the request as JSON.
  body=$("$CLUSTER" exec curl -s --max-time 5 "http://$ip:3000/selftest") ||
    fail "$ns/$pod did not answer at http://$ip:3000"
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

log "deleting namespace gateway-conformance-web-backend and waiting for it to finalise"
k delete namespace gateway-conformance-web-backend --wait=false >/dev/null
k wait --for=delete namespace/gateway-conformance-web-backend --timeout="$WAIT" >/dev/null ||
  fail "namespace gateway-conformance-web-backend did not finalise"

log "SELFTEST PASSED in $((SECONDS - started)) s (Gateway API $GATEWAY_API_VERSION base manifests)"
