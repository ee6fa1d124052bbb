#!/usr/bin/env bash
# Smoke test of the node agent against the local cluster (conformance/cluster.sh up).
#
#   conformance/node-agent/smoke.sh [AGENT_BINARY]
#
# With AGENT_BINARY, starts that agent inside gwr-conf (state in a temporary
# folder) and stops it at the end; without, expects cluster.sh's agent to run.
# Creates namespace gwr-smoke with an echo-basic Deployment (2 replicas, a
# Secret volume at /etc/certs, the automatic service-account volume, a
# hostPath volume and a preStop hook) and a pod with an unknown image;
# checks pods Running at 10.244.x.y, echo-basic's JSON over the pod IP, what
# the process sees in its mount namespace (the Secret at its mount path, the
# token, resolv.conf, hosts, hostname, KUBERNETES_SERVICE_HOST), that the
# token authenticates as the pod's ServiceAccount against the API server at
# 10.244.0.1 verified with the mounted ca.crt, that a Secret update reaches
# the pod within 15 s, the unknown image's message, logs through the API
# server, that a failing liveness probe restarts a container, that the
# preStop hook ran inside the pod on deletion, and that the
# namespace finalises. Needs root, nsenter and curl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/conformance/cluster.sh"
RUN="$ROOT/.tools/k8s/run"
NS=gwr-smoke
AGENT=${1:-}
# The image map: cluster.sh writes one when it starts the agent itself.
IMAGE_MAP=${IMAGE_MAP:-$RUN/images.yaml}

say() { printf '[smoke] %s\n' "$*" >&2; }
fail() { printf '[smoke] FAIL: %s\n' "$*" >&2; exit 1; }
k() { "$CLUSTER" exec kubectl "$@"; }

agent_pid=
state=
hookdir=$(mktemp -d /tmp/gwr-smoke-hook.XXXXXX)
cleanup() {
  rm -rf "$hookdir"
  k delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [[ -n $agent_pid ]]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$agent_pid" 2>/dev/null || true
  fi
  [[ -n $state && -z ${KEEP_STATE:-} ]] && rm -rf "$state"
  return 0
}
trap cleanup EXIT

if [[ -n $AGENT ]]; then
  state=$(mktemp -d /tmp/gwr-agent-smoke.XXXXXX)
  if [[ ! -f $IMAGE_MAP ]]; then
    IMAGE_MAP=$state/images.yaml
    printf -- '- image: "images.example.test/gateway-api/echo-basic:"\n  binary: %s\n' \
      "$ROOT/.tools/k8s/bin/echo-basic" >"$IMAGE_MAP"
  fi
  "$CLUSTER" exec "$AGENT" --kubeconfig "$ROOT/.tools/k8s/kubeconfig" --node-name gwr-node \
    --node-ip 10.244.0.1 --pod-cidr 10.244.0.0/16 --bridge gwr0 --state-dir "$state" \
    --image-map "$IMAGE_MAP" --kubelet-port 10250 >"$state.log" 2>&1 &
  agent_pid=$!
  say "agent started (pid $agent_pid, log $state.log)"
fi

for _ in $(seq 60); do
  k get node gwr-node -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True && break
  sleep 1
done
k get node gwr-node -o wide || fail "node gwr-node is not there"

image=$(grep -o 'image: "[^"]*"' "$IMAGE_MAP" | head -1 | sed 's/image: "//; s/"$//')
[[ -n $image ]] || fail "no echo-basic entry in $IMAGE_MAP"
image="${image}smoke"
say "echo image: $image"

k create namespace "$NS"
k -n "$NS" create secret generic certs --from-literal=crt=CERT --from-literal=key=KEY
k -n "$NS" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: $image
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: CERT_FILE, value: /etc/certs/server.crt}
        ports: [{name: http, containerPort: 3000}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 2}
        livenessProbe: {tcpSocket: {port: http}, periodSeconds: 2}
        lifecycle:
          preStop:
            exec: {command: [sh, -c, 'cat /etc/certs/server.crt > /hook/\$HOSTNAME']}
        volumeMounts:
        - {name: certs, mountPath: /etc/certs, readOnly: true}
        - {name: hook, mountPath: /hook}
      volumes:
      - name: certs
        secret: {secretName: certs, items: [{key: crt, path: server.crt}]}
      - name: hook
        hostPath: {path: $hookdir}
---
apiVersion: v1
kind: Pod
metadata: {name: not-alive}
spec:
  containers:
  - name: echo
    image: $image
    livenessProbe: {tcpSocket: {port: 3999}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: unknown-image}
spec:
  containers: [{name: c, image: example.invalid/nothing:1}]
YAML

say "waiting for 2 ready echo pods"
for _ in $(seq 90); do
  n=$(k -n "$NS" get pods -l app=echo -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  ((n == 2)) && break
  sleep 1
done
k -n "$NS" get pods -o wide
((n == 2)) || fail "echo pods not ready"

for pod in $(k -n "$NS" get pods -l app=echo -o jsonpath='{.items[*].metadata.name}'); do
  ip=$(k -n "$NS" get pod "$pod" -o jsonpath='{.status.podIP}')
  [[ $ip == 10.244.* ]] || fail "pod $pod has IP '$ip'"
  body=$("$CLUSTER" exec curl -sf -m 5 "http://$ip:3000/smoke")
  say "$pod ($ip): $body"
  grep -q "\"pod\": *\"$pod\"" <<<"$body" || fail "echo of $pod does not name the pod"
  grep -q "\"namespace\": *\"$NS\"" <<<"$body" || fail "echo of $pod does not name the namespace"
done

# What the process sees in its own mount namespace.
pod=$(k -n "$NS" get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
pid=
for p in $(pgrep -x echo-basic); do
  if tr '\0' '\n' <"/proc/$p/environ" | grep -qx "POD_NAME=$pod"; then pid=$p; fi
done
[[ -n $pid ]] || fail "no echo-basic process for $pod"
in_pod() { nsenter -t "$pid" -m -u -n "$@"; }
say "pod $pod is process $pid"
[[ $(in_pod cat /etc/certs/server.crt) == CERT ]] || fail "/etc/certs/server.crt does not hold the Secret's crt"
in_pod sh -c 'echo x > /etc/certs/new' 2>/dev/null && fail "/etc/certs is writable (readOnly)"
[[ ! -e /etc/certs && ! -e /hook ]] || fail "/etc/certs or /hook appeared on the host"
in_pod test -d /hook || fail "/hook (a mount point directly under /) is not there"
sa=/var/run/secrets/kubernetes.io/serviceaccount
[[ $(in_pod cat $sa/namespace) == "$NS" ]] || fail "$sa/namespace is not $NS"
in_pod grep -q 'BEGIN CERTIFICATE' $sa/ca.crt || fail "$sa/ca.crt is not a certificate"
in_pod test -s $sa/token || fail "$sa/token is empty"
say "resolv.conf: $(in_pod cat /etc/resolv.conf | tr '\n' ';')"
in_pod grep -qx "search $NS.svc.cluster.local svc.cluster.local cluster.local" /etc/resolv.conf ||
  fail "resolv.conf has no cluster search path"
ip=$(k -n "$NS" get pod "$pod" -o jsonpath='{.status.podIP}')
in_pod grep -q "^$ip[[:space:]]$pod\$" /etc/hosts || fail "/etc/hosts does not name $pod"
[[ $(in_pod hostname) == "$pod" ]] || fail "hostname is not $pod"
tr '\0' '\n' <"/proc/$pid/environ" | grep -qx 'KUBERNETES_SERVICE_HOST=10.96.0.1' ||
  fail "KUBERNETES_SERVICE_HOST is not 10.96.0.1"
# The bound token against the API server's endpoint, its certificate checked
# with the mounted CA: who does it say we are?
who=$(in_pod sh -c "curl -sf -m 5 --cacert $sa/ca.crt -H \"Authorization: Bearer \$(cat $sa/token)\" \
  -H 'Content-Type: application/json' -X POST -d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}' \
  https://10.244.0.1:6443/apis/authentication.k8s.io/v1/selfsubjectreviews") || fail "the token does not work against https://10.244.0.1:6443"
grep -q "\"system:serviceaccount:$NS:default\"" <<<"$who" || fail "the token is not the pod's ServiceAccount: $who"
grep -q "authentication.kubernetes.io/pod-name" <<<"$who" || fail "the token is not bound to the pod: $who"
say "token authenticates as system:serviceaccount:$NS:default, bound to the pod"

# A Secret update reaches the pod through the ..data swap.
k -n "$NS" patch secret certs -p '{"stringData":{"crt":"CERT2"}}' >/dev/null
start=$(date +%s)
for _ in $(seq 30); do
  [[ $(in_pod cat /etc/certs/server.crt) == CERT2 ]] && break
  sleep 0.5
done
[[ $(in_pod cat /etc/certs/server.crt) == CERT2 ]] || fail "the Secret update did not reach the pod within 15 s"
say "Secret update visible in the pod after $(($(date +%s) - start)) s"

# Nothing listens on 3999: the liveness probe restarts the container.
for _ in $(seq 30); do
  restarts=$(k -n "$NS" get pod not-alive -o jsonpath='{.status.containerStatuses[0].restartCount}')
  ((${restarts:-0} >= 1)) && break
  sleep 1
done
((${restarts:-0} >= 1)) || fail "a failing liveness probe did not restart the container within 30 s"
say "failing liveness probe: restartCount $restarts"

msg=$(k -n "$NS" get pod unknown-image -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}')
say "unknown image: $msg"
grep -q "example.invalid/nothing:1" <<<"$msg" || fail "unknown image has no clear message"

token=$(awk '/token:/{print $2}' "$ROOT/.tools/k8s/kubeconfig" | head -1)
pod=$(k -n "$NS" get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
logs=$("$CLUSTER" exec curl -sfk -H "Authorization: Bearer $token" \
  "https://127.0.0.1:6443/api/v1/namespaces/$NS/pods/$pod/log?timestamps=true&tailLines=5")
say "logs of $pod (timestamps, tail 5):"
printf '%s\n' "$logs" >&2
[[ -n $logs ]] || fail "no logs through the API server"
since=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
later=$("$CLUSTER" exec curl -sfk -H "Authorization: Bearer $token" \
  "https://127.0.0.1:6443/api/v1/namespaces/$NS/pods/$pod/log?sinceTime=$since")
[[ -z $later ]] || fail "sinceTime in the future still returned lines"

say "deleting namespace $NS"
start=$(date +%s)
k delete namespace "$NS" --wait=false
for _ in $(seq 120); do
  k get namespace "$NS" >/dev/null 2>&1 || break
  sleep 1
done
k get namespace "$NS" >/dev/null 2>&1 && fail "namespace $NS did not finalise"
say "namespace finalised in $(($(date +%s) - start)) s"
hooks=$(for f in "$hookdir"/*; do [[ -e $f ]] && printf '%s=%s ' "${f##*/}" "$(<"$f")"; done; true)
say "preStop hooks wrote: $hooks"
[[ $(ls "$hookdir" | wc -l) -eq 2 ]] || fail "the preStop hooks did not both run"
for f in "$hookdir"/*; do
  [[ $(<"$f") == CERT2 ]] || fail "the preStop hook of ${f##*/} did not see the pod's /etc/certs"
done
say "OK"
