#!/usr/bin/env bash
# `make helm-e2e`: Gatewright as users run it in a cluster, end to end, in
# the local cluster (conformance/README.md):
#
# 1. `helm install charts/gatewright` with 10-minute xDS client
#    certificates (`--xds-client-cert-validity=10m`, the shortest allowed),
#    then `helm upgrade --reuse-values` (the chart README's first-install
#    path, which adds the GatewayClass);
# 2. an echo Deployment and Service, a Gateway and an HTTPRoute: the
#    Gateway is Programmed with an address from the harness's load-balancer
#    pool, and traffic goes through the Envoy Deployment Gatewright
#    provisioned for it;
# 3. under constant traffic, the leader's process is killed (SIGKILL) and
#    its pod deleted: another replica (the survivor or the killed pod's
#    replacement) takes the Lease, writes the status of a changed HTTPRoute
#    and its new rule is served; not one request fails;
# 4. under constant traffic, the Gateway's xDS client certificate is
#    renewed (due when a third of its life is left: about 400 s after the
#    Gateway was provisioned, so phases 2 and 3 run inside that wait): its
#    Secret gets a new serial, the same Envoy process (pod and restart
#    count unchanged) reports it in its admin `/certs` and no longer the
#    old one; then the controller Deployment is restarted, so Envoy must
#    open new xDS connections (new TLS handshakes, with the renewed
#    certificate), and a changed route is served; not one request fails;
# 5. the Gateway is deleted: its Envoy objects are garbage-collected; then
#    `helm uninstall`: nothing Gatewright made is left.
#
# Every wait is bounded; the cluster is torn down however the script ends.
# Needs root, nsenter and python3 besides what cluster.sh needs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=conformance/cluster.sh
NS=helm-e2e
SYSTEM=gatewright-system
LEASE=gatewright-controller
WAIT=180s
# Traffic: one request every 50 ms, at most this many or this long (the
# failover; the renewal, which waits for the certificate).
MAX_REQUESTS=4000
MAX_SECONDS=240
RENEWAL_MAX_REQUESTS=16000
RENEWAL_MAX_SECONDS=720
# The xDS client certificate lifetime, as the flag and in seconds: the
# shortest the controller takes, so the renewal comes soonest. It reissues
# a certificate once less than a third is left (control-plane/src/pki.rs),
# checking on every full round, at least every RESYNC_S seconds
# (control-plane/src/controller.rs).
CERT_VALIDITY=10m
CERT_VALIDITY_S=600
RESYNC_S=30

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
install_gatewright_with_class --set-json "controller.extraArgs=[\"--xds-client-cert-validity=$CERT_VALIDITY\"]"

# -- 2. a Gateway and a route -------------------------------------------------
echo_image=$(echo_basic_image)

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
# Programmed says the Envoy holds the configuration and its pod is ready;
# the node's load-balancer rules follow the pod into the Service's
# endpoints a moment later (with Kubernetes 1.37 often after the status), so
# the first answer is waited for, briefly.
body=""
for _ in $(seq 1 15); do
  body=$("$CLUSTER" exec curl -s --max-time 5 "http://$addr/hello") && break
  body=""
  sleep 1
done
[[ -n $body ]] || fail "no answer at http://$addr/ within 15 attempts"
[[ $body == *'"namespace":"'$NS'"'* || $body == *'"namespace": "'$NS'"'* ]] ||
  fail "http://$addr/hello did not reach the echo pod: $body"
log "Gateway $NS/gw Programmed at $addr, served by $(tr '\n' ' ' <<<"$envoys")"

# Programmed means acknowledged: the replica the Envoy is connected to
# reports, in its ConfigMap, that the Envoy holds the Gateway's configuration.
reports() { # name<TAB>report.json of every replica's acknowledgement report
  k -n "$SYSTEM" get configmaps -l gatewright.dev/xds-acks=true \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\t"}{.data.report\.json}{"\n"}{end}'
}
deadline=$((SECONDS + 30))
while :; do
  listed=$(reports)
  holding=$(python3 -c '
import json, sys
n = 0
for line in sys.stdin:
    name, _, text = line.rstrip("\n").partition("\t")
    group = json.loads(text or "{}").get("groups", {}).get(sys.argv[1], {})
    n += sum(group.get("holding", {}).values())
print(n)' "$NS/gw" <<<"$listed")
  (($(grep -c . <<<"$listed") == 2 && holding >= 1)) && break
  ((SECONDS < deadline)) || fail "expected 2 acknowledgement reports, one with an Envoy of $NS/gw holding its configuration: $listed"
  sleep 1
done
log "acknowledgement reports: $(cut -f1 <<<"$listed" | tr '\n' ' ')($holding stream(s) of $NS/gw hold its configuration)"

# -- 3. the leader killed under traffic -------------------------------------
# Sends requests through the Gateway from gwr-conf, appending each response
# code to $1 (000 when none came), until the file $2 exists or the bounds
# of $3 seconds or $4 requests are reached; a loop that hit a bound leaves
# $2.bounded behind.
start_traffic() {
  # shellcheck disable=SC2016 # expanded by the inner bash, in gwr-conf
  "$CLUSTER" exec bash -c '
    end=$((SECONDS + $4)); n=0
    while [[ ! -e $2 ]] && ((SECONDS < end && n < $5)); do
      curl -s -o /dev/null -w "%{http_code}\n" --max-time 2 "http://$3/traffic" >>"$1" || echo "000" >>"$1"
      n=$((n + 1)); sleep 0.05
    done
    [[ -e $2 ]] || touch "$2.bounded"' _ "$1" "$2" "$addr" "$3" "$4" &
  traffic_pid=$!
}
# Fails if any request in $1 so far failed; $2 names the phase.
traffic_ok() {
  local failed
  failed=$(grep -cvx 200 "$1" || true)
  ((failed == 0)) || fail "$failed of $(wc -l <"$1") requests failed during the $2: $(sort "$1" | uniq -c | tr '\n' ' ')"
}
# Stops the traffic started with codes file $1 and stop file $2 and checks
# it: it ran to the end of the phase (a bound reached earlier would leave
# the rest unobserved), over 100 requests, every one a 200.
stop_traffic() { # $3: the phase
  local total
  touch "$2"
  wait "$traffic_pid" || true
  traffic_pid=
  [[ ! -e $2.bounded ]] || fail "the traffic through the $3 reached its bounds before the phase ended"
  total=$(wc -l <"$1")
  ((total > 100)) || fail "only $total requests were sent during the $3"
  traffic_ok "$1" "$3"
  log "traffic through the $3: $total requests, 0 failed"
}
# Applies the route with a second rule, PathPrefix $1 answered with the
# header x-e2e: $2, and waits until the route's status is written for its
# new generation and Envoy serves the rule; $3 says after what.
serve_route() {
  local observed header deadline
  route "$first_rules
  - matches:
    - path: { type: PathPrefix, value: $1 }
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{ name: x-e2e, value: $2 }]
    backendRefs:
    - name: echo
      port: 8080" | k apply -f - >/dev/null
  deadline=$((SECONDS + 120))
  while :; do
    observed=$(k -n "$NS" get httproute web -o jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].observedGeneration}')
    generation=$(k -n "$NS" get httproute web -o jsonpath='{.metadata.generation}')
    header=$("$CLUSTER" exec curl -s -o /dev/null -D - --max-time 2 "http://$addr$1" | tr -d '\r' | grep -i '^x-e2e:' || true)
    [[ $observed == "$generation" && $header == *"$2"* ]] && break
    ((SECONDS < deadline)) || fail "$3: route status at generation '$observed' of $generation, $1 header '$header'"
    sleep 1
  done
}

codes=$work/codes
stop=$work/stop
start_traffic "$codes" "$stop" "$MAX_SECONDS" "$MAX_REQUESTS"
sleep 3

kill_leader

serve_route /new after-failover "after the failover"
log "route status written for generation $generation by the new leader; /new is served"
# The killed leader's report goes with its Pod (it owns the ConfigMap).
deadline=$((SECONDS + 60))
while reports | cut -f1 | grep -qx "gatewright-xds-acks-$leader"; do
  ((SECONDS < deadline)) || fail "the killed leader's acknowledgement report is still there"
  sleep 1
done
log "the killed leader's acknowledgement report was garbage-collected with its Pod"
sleep 3
stop_traffic "$codes" "$stop" failover

# -- 4. the xDS client certificate renewed under traffic --------------------
codes=$work/renewal-codes
stop=$work/renewal-stop
start_traffic "$codes" "$stop" "$RENEWAL_MAX_SECONDS" "$RENEWAL_MAX_REQUESTS"

# The Gateway's client Secret: the kubernetes.io/tls Secret Gatewright made
# that the Gateway owns, and the one its Envoy pod mounts.
gw_uid=$(k -n "$NS" get gateway gw -o jsonpath='{.metadata.uid}')
secret=$(k -n "$NS" get secrets -l app.kubernetes.io/managed-by=gatewright \
  -o jsonpath='{range .items[?(@.type=="kubernetes.io/tls")]}{.metadata.name} {.metadata.ownerReferences[*].uid}{"\n"}{end}' |
  awk -v uid="$gw_uid" '{ for (i = 2; i <= NF; i++) if ($i == uid) print $1 }')
[[ $(wc -w <<<"$secret") == 1 ]] || fail "expected one kubernetes.io/tls Secret owned by Gateway $NS/gw, found '$secret'"
(($(wc -l <<<"$envoys") == 1)) || fail "expected one Envoy pod, got: $envoys"
envoy_pod=${envoys#pod/}
k -n "$NS" get pod "$envoy_pod" -o jsonpath='{.spec.volumes[*].secret.secretName}' | tr ' ' '\n' | grep -qx -- "$secret" ||
  fail "Envoy pod $envoy_pod does not mount Secret $secret"

# The pod's Envoy process (lib.sh). Its admin interface listens on
# 127.0.0.1 in the pod's network namespace, on the port its bootstrap
# names; `ip netns exec` cannot enter pod namespaces from here
# (conformance/node-agent/README.md, "Mount namespaces"), nsenter through
# the process can.
envoy_pid=$(envoy_pid_of "$envoy_pod")
[[ $(wc -w <<<"$envoy_pid") == 1 ]] || fail "expected one Envoy process of pod $envoy_pod, found '$envoy_pid'"
restarts() { k -n "$NS" get pod "$envoy_pod" -o jsonpath='{.status.containerStatuses[*].restartCount}'; }
envoy_restarts=$(restarts)
admin_port=$(nsenter -t "$envoy_pid" -m cat /etc/gatewright/bootstrap/envoy.json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["admin"]["address"]["socket_address"]["port_value"])') ||
  fail "cannot read the admin port from the bootstrap of Envoy process $envoy_pid"
admin() { nsenter -t "$envoy_pid" -n curl -sf --max-time 2 "http://127.0.0.1:$admin_port$1"; }
# Serials as lower-case hex without leading zeros, how Envoy prints them.
norm_serial() { tr 'A-F' 'a-f' | sed -e 's/^serial=//' -e 's/^0*//'; }
# The serials of the certificates Envoy presents (its CA certificates are
# listed apart, under ca_cert).
envoy_serials() {
  admin /certs | python3 -c 'import json, sys
for c in json.load(sys.stdin).get("certificates", []):
    for cert in c.get("cert_chain", []):
        print(cert["serial_number"])' | norm_serial | sort -u
}
# The TLS handshakes Envoy has made with the xDS server.
handshakes() { admin /stats | sed -n 's/^cluster\.gatewright-xds\.ssl\.handshake: //p'; }
same_envoy() { # $1: when
  local now_envoys
  now_envoys=$(k -n "$NS" get pods -l gateway.networking.k8s.io/gateway-name=gw -o name)
  [[ $now_envoys == "$envoys" ]] || fail "$1: the Envoy pods are now $(tr '\n' ' ' <<<"$now_envoys"), were $envoys"
  [[ $(restarts) == "$envoy_restarts" ]] || fail "$1: Envoy restarted ($(restarts) restarts, was $envoy_restarts)"
  [[ $(envoy_pid_of "$envoy_pod") == "$envoy_pid" ]] || fail "$1: Envoy is no longer process $envoy_pid"
}
secret_cert() { k -n "$NS" get secret "$secret" -o jsonpath='{.data.tls\.crt}' | base64 -d; }
serial_of() { openssl x509 -noout -serial <<<"$1" | norm_serial; }
not_after_of() { date -d "$(openssl x509 -noout -enddate <<<"$1" | sed 's/^notAfter=//')" +%s; }

# Envoy presents the Secret's certificate (given time to load it, should
# the Secret have been renewed just now: phases 2 and 3 took over 400 s).
deadline=$((SECONDS + 30))
while :; do
  old_cert=$(secret_cert)
  old_serial=$(serial_of "$old_cert")
  serials=$(envoy_serials || true)
  [[ $serials == "$old_serial" ]] && break
  ((SECONDS < deadline)) || fail "Envoy's /certs shows '$serials', not the Secret's certificate $old_serial"
  sleep 1
done
old_end=$(not_after_of "$old_cert")
now=$(date +%s)
((old_end - now <= CERT_VALIDITY_S)) ||
  fail "the client certificate is valid for $((old_end - now)) s more: --xds-client-cert-validity=$CERT_VALIDITY was not applied"
issued=$((old_end - CERT_VALIDITY_S))
due=$((issued + CERT_VALIDITY_S - CERT_VALIDITY_S / 3))
log "client certificate: Secret $NS/$secret, serial $old_serial, issued $(date -d "@$issued" +%T) for $CERT_VALIDITY_S s, shown by Envoy's /certs (pid $envoy_pid, admin port $admin_port); renewal due at $(date -d "@$due" +%T), in $((due - now)) s"

# Renewal is checked on every full round, at least every RESYNC_S: allow
# two of them after it is due.
deadline=$((due + 2 * RESYNC_S))
while :; do
  new_cert=$(secret_cert)
  new_serial=$(serial_of "$new_cert")
  [[ $new_serial != "$old_serial" ]] && break
  traffic_ok "$codes" renewal
  (($(date +%s) < deadline)) ||
    fail "the client certificate was not renewed by $(date -d "@$deadline" +%T), $((deadline - issued)) s after issuance (due after $((due - issued)) s)"
  sleep 2
done
seen=$SECONDS
new_end=$(not_after_of "$new_cert")
((new_end > old_end)) || fail "the new certificate $new_serial ends at $new_end, not after the old one ($old_end)"
log "client certificate renewed $((new_end - old_end)) s after issuance (due after $((due - issued)) s): serial $old_serial -> $new_serial"
deadline=$((SECONDS + 60))
while :; do
  serials=$(envoy_serials || true)
  [[ $serials == "$new_serial" ]] && break
  ((SECONDS < deadline)) || fail "60 s after the renewal, Envoy's /certs shows '$serials', not only $new_serial"
  sleep 1
done
same_envoy "after the renewal"
log "Envoy $envoy_pod (same process $envoy_pid, $envoy_restarts restarts) presents $new_serial and no longer $old_serial, $((SECONDS - seen)) s after the Secret changed"

# New xDS connections: once the old replicas are gone, Envoy's streams can
# only be to new ones, over handshakes made with the certificate /certs
# shows.
handshakes_before=$(handshakes || true)
[[ -n $handshakes_before ]] || fail "Envoy has no cluster.gatewright-xds.ssl.handshake statistic"
deployment=$(k -n "$SYSTEM" get deployments -l app.kubernetes.io/name=gatewright -o name)
old_replicas=$(k -n "$SYSTEM" get pods -l app.kubernetes.io/name=gatewright -o name)
log "restarting $deployment"
k -n "$SYSTEM" rollout restart "$deployment" >/dev/null
k -n "$SYSTEM" rollout status "$deployment" --timeout="$WAIT" >/dev/null || fail "$deployment did not roll out"
deadline=$((SECONDS + 90))
# shellcheck disable=SC2086 # one argument per pod
while [[ -n $(k -n "$SYSTEM" get $old_replicas --ignore-not-found -o name 2>/dev/null) ]]; do
  ((SECONDS < deadline)) || fail "the old controller pods are still there: $(tr '\n' ' ' <<<"$old_replicas")"
  sleep 1
done
serve_route /renewed after-renewal "after the controller restart"
handshakes_after=$(handshakes || true)
((${handshakes_after:-0} > handshakes_before)) ||
  fail "Envoy made no new xDS TLS handshake after the restart ($handshakes_before before, $handshakes_after after)"
serials=$(envoy_serials || true)
[[ $serials == "$new_serial" ]] || fail "after the restart, Envoy's /certs shows '$serials', not only $new_serial"
same_envoy "after the controller restart"
log "controller restarted: Envoy made $((handshakes_after - handshakes_before)) new xDS TLS handshake(s) with $new_serial; route generation $generation served at /renewed"
sleep 3
stop_traffic "$codes" "$stop" renewal

# -- 5. clean removal --------------------------------------------------------
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
