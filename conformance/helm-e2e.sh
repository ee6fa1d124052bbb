#!/usr/bin/env bash
# `make helm-e2e`: Gatewright as users run it in a cluster, end to end, in
# the local cluster (conformance/README.md):
#
# 1. `helm install charts/gatewright`, then `helm upgrade --reuse-values`
#    (the chart README's first-install path, which adds the GatewayClass);
# 2. an echo Deployment and Service, a Gateway and an HTTPRoute: the
#    Gateway is Programmed with an address from the harness's load-balancer
#    pool, and traffic goes through the Envoy Deployment Gatewright
#    provisioned for it;
# 3. under constant traffic, the leader's process is killed (SIGKILL) and
#    its pod deleted: another replica (the survivor or the killed pod's
#    replacement) takes the Lease, writes the status of a changed HTTPRoute
#    and its new rule is served; not one request fails;
# 4. the Gateway is deleted: its Envoy objects are garbage-collected; then
#    `helm uninstall`: nothing Gatewright made is left.
#
# Every wait is bounded; the cluster is torn down however the script ends.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
NS=helm-e2e
SYSTEM=gatewright-system
LEASE=gatewright-controller
WAIT=180s
# Traffic: one request every 50 ms, at most this many or this long.
MAX_REQUESTS=4000
MAX_SECONDS=240

# shellcheck source=conformance/lib.sh
. conformance/lib.sh
fail() {
  printf 'HELM E2E FAILED: %s\n' "$*" >&2
  exit 1
}
k() { "$CLUSTER" exec kubectl "$@"; }

work=$(mktemp -d)
before_down() {
  [[ -n ${traffic_pid:-} ]] && kill "$traffic_pid" 2>/dev/null
  if (($1 != 0)); then
    log "diagnostics"
    k get pods -A -o wide 2>&1 | tail -n 30 || true
    k -n "$SYSTEM" logs -l app.kubernetes.io/name=gatewright --all-containers --prefix --tail=30 2>&1 || true
  fi
  rm -rf "$work" "${HELM_HOME_DIR:-}"
}
cluster_down_on_exit

started=$SECONDS
log "building (only what is missing)"
"$CLUSTER" build
cargo build -p gatewright -p gatewright-node-agent
"$CLUSTER" up

# -- 1. install -------------------------------------------------------------
helm_install_gatewright
log "helm upgrade --reuse-values (the first install's second step: the GatewayClass)"
"$CLUSTER" exec "$HELM" upgrade gatewright charts/gatewright --namespace "$SYSTEM" \
  --reuse-values --wait --timeout 5m >/dev/null
k wait gatewayclass/gatewright --for=condition=Accepted --timeout="$WAIT" >/dev/null ||
  fail "GatewayClass gatewright not Accepted"
replicas=$(k -n "$SYSTEM" get pods -l app.kubernetes.io/name=gatewright \
  -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}')
(($(wc -l <<<"$replicas") == 2)) || fail "expected 2 running controller pods, got: $replicas"
log "controller pods: $(tr '\n' ' ' <<<"$replicas")"

# -- 2. a Gateway and a route -------------------------------------------------
# The echo image of the suite's base manifests (the node agent maps it to
# echo-basic), read from the conformance module so no image is spelled here.
export GOFLAGS=-modcacherw
(cd conformance/suite && go mod download sigs.k8s.io/gateway-api/conformance)
module_dir=$(cd conformance/suite && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
echo_image=$(sed -n 's/^ *image: *\([^ ]*echo-basic[^ ]*\).*/\1/p' "$module_dir/base/manifests.yaml" | head -n 1)
[[ -n $echo_image ]] || fail "no echo-basic image in the base manifests"

route() { # $1: generation-specific rules
  cat <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: $NS
spec:
  parentRefs:
  - name: gw
  rules:
$1
EOF
}
first_rules='  - backendRefs:
    - name: echo
      port: 8080'
cat >"$work/objects.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: $NS
spec:
  replicas: 1
  selector:
    matchLabels: { app: echo }
  template:
    metadata:
      labels: { app: echo }
    spec:
      containers:
      - name: echo
        image: $echo_image
        env:
        - { name: POD_NAME, valueFrom: { fieldRef: { fieldPath: metadata.name } } }
        - { name: NAMESPACE, valueFrom: { fieldRef: { fieldPath: metadata.namespace } } }
        readinessProbe:
          httpGet: { path: /, port: 3000 }
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: $NS
spec:
  selector: { app: echo }
  ports:
  - { name: http, port: 8080, targetPort: 3000 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: $NS
spec:
  gatewayClassName: gatewright
  listeners:
  - { name: http, port: 80, protocol: HTTP }
---
$(route "$first_rules")
EOF
k apply -f - <"$work/objects.yaml" >/dev/null
k -n "$NS" wait deployment/echo --for=condition=Available --timeout="$WAIT" >/dev/null ||
  fail "the echo Deployment did not become Available"
k -n "$NS" wait gateway/gw --for=condition=Programmed --timeout="$WAIT" >/dev/null ||
  fail "Gateway $NS/gw not Programmed: $(k -n "$NS" get gateway gw -o jsonpath='{.status.conditions}')"
addr=$(k -n "$NS" get gateway gw -o jsonpath='{.status.addresses[0].value}')
[[ $addr == 10.245.* ]] || fail "Gateway address '$addr' is not from the load-balancer pool 10.245.0.0/24"
envoys=$(k -n "$NS" get pods -l gateway.networking.k8s.io/gateway-name=gw -o name)
[[ -n $envoys ]] || fail "no Envoy pod labelled with the Gateway's name"
body=$("$CLUSTER" exec curl -s --max-time 5 "http://$addr/hello") || fail "no answer at http://$addr/"
[[ $body == *'"namespace":"'$NS'"'* || $body == *'"namespace": "'$NS'"'* ]] ||
  fail "http://$addr/hello did not reach the echo pod: $body"
log "Gateway $NS/gw Programmed at $addr, served by $(tr '\n' ' ' <<<"$envoys")"

# -- 3. the leader killed under traffic -------------------------------------
codes=$work/codes
stop=$work/stop
"$CLUSTER" exec bash -c '
  end=$((SECONDS + $4)); n=0
  while [[ ! -e $2 ]] && ((SECONDS < end && n < $5)); do
    curl -s -o /dev/null -w "%{http_code}\n" --max-time 2 "http://$3/traffic" >>"$1" || echo "000" >>"$1"
    n=$((n + 1)); sleep 0.05
  done' _ "$codes" "$stop" "$addr" "$MAX_SECONDS" "$MAX_REQUESTS" &
traffic_pid=$!
sleep 3

leader=$(k -n "$SYSTEM" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}')
grep -qx "$leader" <<<"$replicas" || fail "Lease holder '$leader' is not a controller pod"
survivor=$(grep -vx "$leader" <<<"$replicas")
pid=$(pgrep -f -- "--identity=$leader( |$)" || true)
[[ $(wc -w <<<"$pid") == 1 ]] || fail "expected one process of $leader, found '$pid'"
log "killing the leader $leader (pid $pid) with SIGKILL and deleting its pod"
kill -KILL "$pid"
k -n "$SYSTEM" delete pod "$leader" --grace-period=0 --force --wait=false >/dev/null 2>&1
# The Deployment replaces the killed pod at once, and its replacement
# races the survivor for the expired Lease (each checks every third of the
# lease duration, timing it from when it first saw the last renewal):
# either may win, as long as it is a live replica.
deadline=$((SECONDS + 90))
while :; do
  holder=$(k -n "$SYSTEM" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  if [[ -n $holder && $holder != "$leader" ]] &&
    [[ $(k -n "$SYSTEM" get pod "$holder" -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]]; then
    break
  fi
  ((SECONDS < deadline)) || fail "the Lease is held by '$holder', not by a running replica other than $leader"
  sleep 1
done
if [[ $holder == "$survivor" ]]; then
  log "the surviving replica $holder took the Lease"
else
  log "$holder, which replaced the killed leader, took the Lease"
fi

route '  - backendRefs:
    - name: echo
      port: 8080
  - matches:
    - path: { type: PathPrefix, value: /new }
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{ name: x-e2e, value: after-failover }]
    backendRefs:
    - name: echo
      port: 8080' | k apply -f - >/dev/null
deadline=$((SECONDS + 120))
while :; do
  observed=$(k -n "$NS" get httproute web -o jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].observedGeneration}')
  generation=$(k -n "$NS" get httproute web -o jsonpath='{.metadata.generation}')
  header=$("$CLUSTER" exec curl -s -o /dev/null -D - --max-time 2 "http://$addr/new" | tr -d '\r' | grep -i '^x-e2e:' || true)
  [[ $observed == "$generation" && $header == *after-failover* ]] && break
  ((SECONDS < deadline)) || fail "after the failover: route status at generation '$observed' of $generation, /new header '$header'"
  sleep 1
done
log "route status written for generation $generation by the new leader; /new is served"
sleep 3
touch "$stop"
wait "$traffic_pid" || true
traffic_pid=
total=$(wc -l <"$codes")
failed=$(grep -cvx 200 "$codes" || true)
((total > 100)) || fail "only $total requests were sent"
((failed == 0)) || fail "$failed of $total requests failed: $(sort "$codes" | uniq -c | tr '\n' ' ')"
log "traffic through the failover: $total requests, $failed failed"

# -- 4. clean removal --------------------------------------------------------
left() { # objects Gatewright made, in every namespace
  k get deployments,services,configmaps,serviceaccounts,secrets,leases -A \
    -l app.kubernetes.io/managed-by=gatewright -o name 2>/dev/null
}
k -n "$NS" delete gateway gw --wait=true --timeout="$WAIT" >/dev/null
deadline=$((SECONDS + 120))
while [[ -n $(k -n "$NS" get deployments,services,configmaps,serviceaccounts,secrets \
  -l app.kubernetes.io/managed-by=gatewright -o name 2>/dev/null) ]]; do
  ((SECONDS < deadline)) || fail "the deleted Gateway's objects are still there"
  sleep 1
done
log "the Gateway's Envoy objects were garbage-collected"
"$CLUSTER" exec "$HELM" uninstall gatewright --namespace "$SYSTEM" --wait --timeout 5m >/dev/null
deadline=$((SECONDS + 120))
while :; do
  rest=$(left)
  rest+=$(k -n "$SYSTEM" get secret/gatewright-xds-ca -o name 2>/dev/null || true)
  rest+=$(k -n "$SYSTEM" get lease/"$LEASE" -o name 2>/dev/null || true)
  rest+=$(k -n "$SYSTEM" get pods -o name 2>/dev/null || true)
  [[ -z $rest ]] && break
  ((SECONDS < deadline)) || fail "after helm uninstall, still there: $rest"
  sleep 1
done
log "helm uninstall left nothing Gatewright made"
log "HELM E2E PASSED in $((SECONDS - started)) s"
