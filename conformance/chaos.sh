#!/usr/bin/env bash
# `make chaos-k8s`: chaos under load in the local cluster (issue 16, item 5,
# the cluster half). Continuous traffic on both listeners of a Gateway while
# routes, filters, backends and the certificate change, the leader
# controller is killed and the Gateway's Envoys are restarted; every
# response is counted, and any code, backend or header the change did not
# ask for fails the run, as does a connection failure outside the one phase
# that kills Envoy ungracefully (there they are counted and reported).
#
# 1. The cluster, Gatewright with Helm (2 controller replicas), two echo
#    Deployments (2 replicas each, a preStop pause so that Envoy learns of a
#    leaving pod before it stops: see "Backends" below), a Gateway with an
#    HTTP and an HTTPS listener (a certificate made here with openssl) and
#    2 Envoy replicas (ProxyParameters deployment.replicas), HTTPRoutes
#    /steady (never touched), /filter, /split and /churn.
# 2. conformance/chaos-client.py runs, inside gwr-conf, keep-alive clients
#    and one-connection-per-request clients on each listener, through the
#    Gateway's load-balancer address; each records code, echo backend and
#    the two filter headers of every response, checked against what the
#    script says each route may answer (widened before a change, narrowed
#    once every Envoy pod serves it).
# 3. The phases, each followed by a bounded wait until the change is served
#    (by every Envoy pod, asked at its pod IP on both listeners): baseline;
#    route-add, route-remove (/churn answers 404 when absent: asked for);
#    filter-change (request and response header modifiers v1 -> v2);
#    weight-shift (/split echo-a -> both -> echo-b); backend-scale (echo-b
#    2 -> 4 -> 2); backend-rollout (rollout restart of echo-a);
#    cert-rotation (the HTTPS Secret gets a new certificate: its serial is
#    seen with openssl s_client through the Gateway address and at every
#    Envoy pod); leader-kill (the leader's process SIGKILLed, then /filter
#    changed to v3 and served); envoy-rollout (rollout restart of the
#    Envoy Deployment); envoy-pod-delete (one Envoy pod deleted,
#    gracefully); envoy-sigkill (one Envoy process SIGKILLed: connection
#    failures expected); recovery.
# 4. One summary line per phase ("CHAOS <phase>: ..."), the total time;
#    the cluster is torn down however the script ends.
#
# Backends: a pod leaving its Deployment (scale down, rolling restart) must
# stay up until Envoy has dropped it from the cluster, else requests already
# routed to it fail; as with any proxy (kube-proxy included), that is the
# backend's preStop pause, which the echo Deployments here have.
#
# Bounded: the traffic stops after MAX_SECONDS or MAX_REQUESTS, every wait
# has a timeout. Needs root and python3 besides what cluster.sh needs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
NS=chaos
SYSTEM=gatewright-system
WAIT=180s
MAX_SECONDS=${CHAOS_MAX_SECONDS:-900}
MAX_REQUESTS=${CHAOS_MAX_REQUESTS:-200000}
# The one phase in which connection failures are expected.
UNGRACEFUL=envoy-sigkill

# shellcheck source=conformance/lib.sh
. conformance/lib.sh
fail() {
  printf 'CHAOS FAILED: %s\n' "$*" >&2
  exit 1
}
k() { "$CLUSTER" exec kubectl "$@"; }

work=$(mktemp -d)
chmod 755 "$work"
before_down() {
  if [[ -n ${traffic_pid:-} ]]; then
    touch "$work/stop"
    kill "$traffic_pid" 2>/dev/null || true
  fi
  if (($1 != 0)); then
    log "diagnostics"
    k get pods -A -o wide 2>&1 | tail -n 30 || true
    k -n "$SYSTEM" logs -l app.kubernetes.io/name=gatewright --all-containers --prefix --tail=20 2>&1 || true
    if [[ -s $work/records ]] && cp "$work/records" "${TMPDIR:-/tmp}/chaos-records.jsonl"; then
      log "every request's record: ${TMPDIR:-/tmp}/chaos-records.jsonl"
    fi
  fi
  rm -rf "$work" "${HELM_HOME_DIR:-}"
}
cluster_down_on_exit

started=$SECONDS
log "building (only what is missing)"
"$CLUSTER" build
cargo build -p gatewright -p gatewright-node-agent
"$CLUSTER" up

# -- 1. install and objects ---------------------------------------------------
# shellcheck disable=SC2119 # no extra helm arguments
install_gatewright_with_class
echo_image=$(echo_basic_image)

# The HTTPS listener's certificates: one CA, two leaves for gw.chaos.test
# (the second is the rotation), each with a serial of its own.
leaf() { # $1: name, $2: serial (hex)
  openssl req -newkey rsa:2048 -nodes -subj "/CN=gw.chaos.test" \
    -keyout "$work/$1.key" -out "$work/$1.csr" 2>/dev/null
  printf 'subjectAltName=DNS:gw.chaos.test\nextendedKeyUsage=serverAuth\n' >"$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -set_serial "0x$2" \
    -days 2 -extfile "$work/$1.ext" -out "$work/$1.crt" 2>/dev/null
}
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=chaos-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
leaf first c0ffee01
leaf second c0ffee02
tls_secret() { # $1: leaf name
  k -n "$NS" create secret tls chaos-tls --cert "$work/$1.crt" --key "$work/$1.key" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
}

echo_deployment() { # $1: name
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
  namespace: $NS
spec:
  replicas: 2
  selector:
    matchLabels: { app: $1 }
  template:
    metadata:
      labels: { app: $1 }
    spec:
      terminationGracePeriodSeconds: 15
      containers:
      - name: echo
        image: $echo_image
        env:
        - { name: POD_NAME, valueFrom: { fieldRef: { fieldPath: metadata.name } } }
        - { name: NAMESPACE, valueFrom: { fieldRef: { fieldPath: metadata.namespace } } }
        readinessProbe:
          httpGet: { path: /, port: 3000 }
          periodSeconds: 2
        lifecycle:
          preStop: { exec: { command: ["sleep", "5"] } }
---
apiVersion: v1
kind: Service
metadata:
  name: $1
  namespace: $NS
spec:
  selector: { app: $1 }
  ports:
  - { name: http, port: 8080, targetPort: 3000 }
---
EOF
}
# An HTTPRoute on both listeners: $1 name, $2 path prefix, $3 the rest of
# its one rule (filters, backendRefs).
httproute() {
  cat <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: $1
  namespace: $NS
spec:
  parentRefs:
  - name: gw
  rules:
  - matches:
    - path: { type: PathPrefix, value: $2 }
$3
EOF
}
backend() { printf '    - { name: %s, port: 8080, weight: %s }\n' "$1" "${2:-1}"; }
filter_rules() { # $1: the header value both modifiers set
  cat <<EOF
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{ name: x-chaos-req, value: $1 }]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{ name: x-chaos-resp, value: $1 }]
    backendRefs:
$(backend echo-a)
EOF
}
split_rules() { # $1: echo-a's weight, $2: echo-b's
  printf '    backendRefs:\n%s\n%s\n' "$(backend echo-a "$1")" "$(backend echo-b "$2")"
}
apply_route() { # as httproute
  httproute "$@" | k apply -f - >/dev/null
}

k create namespace "$NS" >/dev/null
tls_secret first
{
  echo_deployment echo-a
  echo_deployment echo-b
  cat <<EOF
apiVersion: gatewright.dev/v1alpha1
kind: ProxyParameters
metadata:
  name: chaos
  namespace: $NS
spec:
  deployment:
    replicas: 2
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: $NS
spec:
  gatewayClassName: gatewright
  infrastructure:
    parametersRef: { group: gatewright.dev, kind: ProxyParameters, name: chaos }
  listeners:
  - { name: http, port: 80, protocol: HTTP }
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs: [{ name: chaos-tls }]
---
EOF
  httproute steady /steady "    backendRefs:
$(backend echo-a)"
  echo ---
  httproute filter /filter "$(filter_rules v1)"
  echo ---
  httproute split /split "$(split_rules 1 0)"
} | k apply -f - >/dev/null
for d in echo-a echo-b; do
  k -n "$NS" wait "deployment/$d" --for=condition=Available --timeout="$WAIT" >/dev/null ||
    fail "the $d Deployment did not become Available"
done
k -n "$NS" wait gateway/gw --for=condition=Programmed --timeout="$WAIT" >/dev/null ||
  fail "Gateway $NS/gw not Programmed: $(k -n "$NS" get gateway gw -o jsonpath='{.status.conditions}')"
addr=$(k -n "$NS" get gateway gw -o jsonpath='{.status.addresses[0].value}')
[[ $addr == 10.245.* ]] || fail "Gateway address '$addr' is not from the load-balancer pool 10.245.0.0/24"
envoy_deployment=$(k -n "$NS" get deployments -l "gateway.networking.k8s.io/gateway-name=gw" -o name)
[[ $(wc -w <<<"$envoy_deployment") == 1 ]] || envoy_deployment=$(k -n "$NS" get deployments \
  -l app.kubernetes.io/managed-by=gatewright -o name)
[[ $(wc -w <<<"$envoy_deployment") == 1 ]] || fail "expected one Envoy Deployment, found '$envoy_deployment'"
k -n "$NS" rollout status "$envoy_deployment" --timeout="$WAIT" >/dev/null ||
  fail "$envoy_deployment did not roll out"
[[ $(k -n "$NS" get "$envoy_deployment" -o jsonpath='{.status.readyReplicas}') == 2 ]] ||
  fail "$envoy_deployment does not have 2 ready replicas (ProxyParameters deployment.replicas: 2)"

# The ready, not terminating, Envoy pods: name<TAB>IP, one a line.
envoy_pods() {
  k -n "$NS" get pods -l gateway.networking.k8s.io/gateway-name=gw -o json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    if ready and not p["metadata"].get("deletionTimestamp"):
        print(p["metadata"]["name"] + "\t" + p["status"]["podIP"])'
}
envoy_ips() { envoy_pods | cut -f2 | paste -sd,; }
cc() { "$CLUSTER" exec python3 conformance/chaos-client.py "$@"; }
# Waits until every Envoy pod serves route $1 as $2... ask, then narrows
# the route's expectation to that; a phase's change is served.
settle() { # $1: path, then k=v pairs and settle options
  local ips
  ips=$(envoy_ips)
  cc settle "$work" "$@" --ips "$ips" --ca "$work/ca.crt" --timeout 90 ||
    fail "phase $current_phase: $1 not served as asked by every Envoy pod ($ips)"
}
expect() { cc expect "$work" "$@"; }
phase() { # $1: name; the traffic's requests from now on count for it
  current_phase=$1
  printf '%s %s\n' "$1" "$(date +%s.%N)" >>"$work/phases"
  printf '%s\n' "$1" >"$work/phase.tmp"
  mv -f "$work/phase.tmp" "$work/phase" # the clients never read it half-written
  log "phase $1"
}

expect /steady codes=200 backends=echo-a resp=- req=-
expect /filter codes=200 backends=echo-a resp=v1 req=v1
expect /split codes=200 backends=echo-a resp=- req=-
expect /churn codes=404 backends=echo-b resp=- req=-
current_phase=setup
for path in /steady /filter /split /churn; do settle "$path"; done
pods=$(envoy_pods)
log "Gateway $NS/gw Programmed at $addr; Envoy pods: $(cut -f1 <<<"$pods" | paste -sd' ') ($(envoy_ips)); every route served by each"

# -- 2. traffic and changes ---------------------------------------------------
phase baseline
"$CLUSTER" exec python3 conformance/chaos-client.py run "$work" --addr "$addr" --ca "$work/ca.crt" \
  --max-seconds "$MAX_SECONDS" --max-requests "$MAX_REQUESTS" &
traffic_pid=$!
sleep 10

phase route-add
expect /churn codes=200,404
apply_route churn /churn "    backendRefs:
$(backend echo-b)"
settle /churn codes=200
sleep 2

phase route-remove
expect /churn codes=200,404
k -n "$NS" delete httproute churn --timeout=60s >/dev/null
settle /churn codes=404
sleep 2

phase filter-change
expect /filter resp=v1,v2 req=v1,v2
apply_route filter /filter "$(filter_rules v2)"
settle /filter resp=v2 req=v2
sleep 2

phase weight-shift
expect /split backends=echo-a,echo-b
apply_route split /split "$(split_rules 1 1)"
settle /split --need-backends echo-a,echo-b --in-a-row 20
sleep 2
apply_route split /split "$(split_rules 0 1)"
settle /split backends=echo-b
sleep 2

# Until every pod of $1 is one of $2 (names, one a line) and they number
# $3: the Deployment's old or extra pods are gone.
wait_pods() { # $1: deployment, $2: pods that may stay ("" for any), $3: count
  local deadline=$((SECONDS + 120)) now
  while :; do
    now=$(k -n "$NS" get pods -l "app=$1" -o name)
    if (($(grep -c . <<<"$now") == $3)) &&
      { [[ -z $2 ]] || ! grep -qvxF -f <(printf '%s\n' "$2") <<<"$now"; }; then
      return 0
    fi
    ((SECONDS < deadline)) || fail "phase $current_phase: the pods of $1 are $(paste -sd' ' <<<"$now"), expected $3"
    sleep 1
  done
}

phase backend-scale
k -n "$NS" scale deployment/echo-b --replicas=4 >/dev/null
k -n "$NS" rollout status deployment/echo-b --timeout="$WAIT" >/dev/null || fail "echo-b did not scale to 4"
sleep 5
k -n "$NS" scale deployment/echo-b --replicas=2 >/dev/null
wait_pods echo-b "" 2
sleep 2

phase backend-rollout
old=$(k -n "$NS" get pods -l app=echo-a -o name)
k -n "$NS" rollout restart deployment/echo-a >/dev/null
k -n "$NS" rollout status deployment/echo-a --timeout="$WAIT" >/dev/null || fail "echo-a did not roll out"
deadline=$((SECONDS + 120))
while grep -qxF -f <(printf '%s\n' "$old") <(k -n "$NS" get pods -l app=echo-a -o name); do
  ((SECONDS < deadline)) || fail "echo-a's old pods are still there"
  sleep 1
done
sleep 2

phase cert-rotation
serial_at() { # $1: address; the serial of the certificate served there for gw.chaos.test
  "$CLUSTER" exec timeout 10 openssl s_client -connect "$1:443" -servername gw.chaos.test </dev/null 2>/dev/null |
    openssl x509 -noout -serial 2>/dev/null | sed 's/^serial=//' | tr 'A-F' 'a-f'
}
before=$(serial_at "$addr")
[[ $before == c0ffee01 ]] || fail "the Gateway presents serial '$before', not the first certificate's c0ffee01"
tls_secret second
deadline=$((SECONDS + 90))
until [[ $(serial_at "$addr") == c0ffee02 ]]; do
  ((SECONDS < deadline)) || fail "the Gateway address $addr still presents '$(serial_at "$addr")' 90 s after the rotation"
  sleep 1
done
for ip in $(envoy_ips | tr , ' '); do
  until [[ $(serial_at "$ip") == c0ffee02 ]]; do
    ((SECONDS < deadline)) || fail "Envoy pod $ip still presents '$(serial_at "$ip")' 90 s after the rotation"
    sleep 1
  done
done
log "serial c0ffee01 -> c0ffee02, seen with openssl s_client at $addr and at every Envoy pod ($(envoy_ips))"
sleep 2

phase leader-kill
kill_leader
expect /filter resp=v2,v3 req=v2,v3
apply_route filter /filter "$(filter_rules v3)"
settle /filter resp=v3 req=v3
deadline=$((SECONDS + 60))
until [[ $(k -n "$NS" get httproute filter -o jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].observedGeneration}') == \
  "$(k -n "$NS" get httproute filter -o jsonpath='{.metadata.generation}')" ]]; do
  ((SECONDS < deadline)) || fail "the new leader did not write the status of the changed route filter"
  sleep 1
done
log "the new leader $holder wrote the changed route's status; /filter serves v3 at every Envoy pod"
sleep 2

# Until the Envoy Deployment has 2 ready pods, none of $1 (names) among its pods.
wait_envoys() {
  local deadline=$((SECONDS + 150)) now
  while :; do
    now=$(k -n "$NS" get pods -l gateway.networking.k8s.io/gateway-name=gw -o name | sed 's#^pod/##')
    if [[ $(envoy_pods | grep -c .) == 2 ]] && (($(grep -c . <<<"$now") == 2)) &&
      ! grep -qxF -f <(printf '%s\n' "$1") <<<"$now"; then
      return 0
    fi
    ((SECONDS < deadline)) || fail "phase $current_phase: the Envoy pods are $(paste -sd' ' <<<"$now") (ready: $(envoy_pods | cut -f1 | paste -sd' ')), old: $(paste -sd' ' <<<"$1")"
    sleep 1
  done
}

phase envoy-rollout
old=$(envoy_pods | cut -f1)
k -n "$NS" rollout restart "$envoy_deployment" >/dev/null
k -n "$NS" rollout status "$envoy_deployment" --timeout="$WAIT" >/dev/null || fail "$envoy_deployment did not roll out"
wait_envoys "$old"
log "Envoy pods $(paste -sd' ' <<<"$old") replaced by $(envoy_pods | cut -f1 | paste -sd' ')"
sleep 3

phase envoy-pod-delete
victim=$(envoy_pods | sed -n 1p | cut -f1) # sed reads it all: no SIGPIPE for envoy_pods
log "deleting Envoy pod $victim (graceful)"
k -n "$NS" delete pod "$victim" --wait=true --timeout=90s >/dev/null || fail "Envoy pod $victim not deleted within 90 s"
wait_envoys "$victim"
log "Envoy pod $victim replaced; Envoy pods: $(envoy_pods | cut -f1 | paste -sd' ')"
sleep 3

phase "$UNGRACEFUL"
victim=$(envoy_pods | sed -n 1p | cut -f1) # sed reads it all: no SIGPIPE for envoy_pods
restarts() { k -n "$NS" get pod "$victim" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
before=$(restarts)
pid=$(envoy_pid_of "$victim")
[[ $(wc -w <<<"$pid") == 1 ]] || fail "expected one Envoy process of pod $victim, found '$pid'"
log "SIGKILL to Envoy process $pid of pod $victim"
kill -KILL "$pid"
deadline=$((SECONDS + 120))
until [[ $(restarts) -gt $before ]] && envoy_pods | cut -f1 | grep -x "$victim" >/dev/null &&
  [[ $(envoy_pods | grep -c .) == 2 ]]; do
  ((SECONDS < deadline)) || fail "Envoy pod $victim did not restart and become ready again"
  sleep 1
done
log "Envoy in pod $victim restarted ($(restarts) restarts) and is ready"
for path in /steady /filter /split /churn; do settle "$path"; done
sleep 2

phase recovery
sleep 10

# -- 3. counts ----------------------------------------------------------------
touch "$work/stop"
date +%s.%N >"$work/ended"
wait "$traffic_pid" || fail "the traffic client failed"
traffic_pid=
[[ ! -e $work/bounded ]] || fail "the traffic reached its bounds ($MAX_SECONDS s or $MAX_REQUESTS requests) before the last phase ended"
log "per phase (from $(wc -l <"$work/records") recorded requests):"
summary_status=0
python3 conformance/chaos-client.py summary "$work" --conn-ok "$UNGRACEFUL" || summary_status=$?
((summary_status == 0)) || fail "responses not asked for (see the lines above)"
log "CHAOS PASSED in $((SECONDS - started)) s"
