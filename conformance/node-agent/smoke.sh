#!/usr/bin/env bash
# Smoke test of the node agent against the local cluster (conformance/cluster.sh up).
#
#   conformance/node-agent/smoke.sh [AGENT_BINARY]
#
# With AGENT_BINARY, starts that agent inside gwr-conf (state in a temporary
# folder) and stops it at the end; without, expects cluster.sh's agent to run.
# Creates namespace gwr-smoke with an echo-basic Deployment (2 replicas, a
# Secret volume whose path reaches the process through an env var) and a pod
# with an unknown image; checks pods Running at 10.244.x.y, echo-basic's JSON
# over the pod IP, the unknown image's message, logs through the API server,
# and that the namespace finalises. Needs root.
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
cleanup() {
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
        readinessProbe: {httpGet: {path: /, port: 3000}, periodSeconds: 2}
        volumeMounts: [{name: certs, mountPath: /etc/certs}]
      volumes:
      - name: certs
        secret: {secretName: certs, items: [{key: crt, path: server.crt}]}
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

# The Secret volume: items honoured, the mount path remapped in the env var.
pod=$(k -n "$NS" get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
for pid in $(pgrep -x echo-basic); do
  if tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "POD_NAME=$pod"; then
    cert=$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^CERT_FILE=//p')
  fi
done
say "CERT_FILE of $pod: ${cert:-unset}"
[[ ${cert:-} == */server.crt && ${cert:-} != /etc/certs/* ]] || fail "CERT_FILE not remapped"
[[ $(cat "$cert") == CERT ]] || fail "$cert does not hold the Secret's crt"

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
say "OK"
