#!/usr/bin/env bash
# A local Kubernetes control plane for the Gateway API conformance suite, with
# no Docker: etcd, kube-apiserver and kube-controller-manager built from Go
# modules and run inside a network namespace of our own (gwr-conf), plus
# Gatewright's node agent (it plays kubelet) when it has been built.
#
#   conformance/cluster.sh build     build missing binaries into .tools/k8s/bin
#   conformance/cluster.sh up        start the cluster (idempotent)
#   conformance/cluster.sh down      stop everything, delete namespaces and state
#   conformance/cluster.sh crds      install the Gateway API v1.7.0 experimental CRDs
#   conformance/cluster.sh exec CMD  run CMD inside gwr-conf with KUBECONFIG set
#   conformance/cluster.sh status    what is running
#
# Needs: Go 1.26+, iproute2, nftables (nft), openssl, curl, and root (network namespaces).
set -euo pipefail
# The suite and harness modules need Go 1.27 (see conformance/README.md).
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF="$ROOT/conformance"
TOOLS="$ROOT/.tools/k8s"
BIN="$TOOLS/bin"
RUN="$TOOLS/run"
PKI="$RUN/pki"
KUBECONFIG_FILE="$TOOLS/kubeconfig"

NS=gwr-conf
BRIDGE=gwr0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
APISERVER_URL=https://127.0.0.1:6443
ETCD_URL=http://127.0.0.1:2379
NODE_AGENT="$ROOT/target/debug/gatewright-node-agent"
# kube-controller-manager runs only these. Not node-lifecycle nor
# taint-eviction (the agent's pods must never be evicted), not pod GC.
KCM_CONTROLLERS=deployment-controller,replicaset-controller,endpointslice-controller,endpointslice-mirroring-controller,endpoints-controller,namespace-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller
# The order `up` starts components in; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager node-agent)

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
export CGO_ENABLED=0

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' is required but not on PATH"
  done
}

need_root() {
  [[ $(id -u) -eq 0 ]] || die "'$1' needs root (it manages network namespaces)"
}

# ---------------------------------------------------------------- build ----

mod_version() { # module-dir module-path
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

timed() { # label command...
  local label=$1 start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "built $label in $((end - start)) s"
}

build_kube() { # binaries...
  local pkgs=() b v minor ld=() x
  for b in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  # Stamp the version, as the Kubernetes release build does (else the
  # binaries report v0.0.0-master and kubectl version fails).
  v=$(mod_version "$CONF/cluster/kube" k8s.io/kubernetes)
  minor=${v#v*.}
  minor=${minor%%.*}
  for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=("-X $x.gitVersion=$v" "-X $x.gitMajor=1" "-X $x.gitMinor=$minor" "-X $x.gitTreeState=clean")
  done
  (cd "$CONF/cluster/kube" && go build -trimpath -ldflags="-s -w ${ld[*]}" -o "${KUBE_OUT:-$BIN}/" "${pkgs[@]}")
}

build_etcd() {
  (cd "$CONF/cluster/etcd" && go build -trimpath -ldflags='-s -w' -o "$BIN/etcd" .)
}

# The source folder of a module the suite's go.mod requires (its
# replacement's, when replaced), downloaded first: `go list -m` alone leaves
# .Dir empty when the module cache does not have it yet (a fresh machine).
suite_module_dir() { # module-path
  local dir
  (cd "$CONF/suite" && go mod download "$1") >&2 || die "cannot download $1"
  dir=$(cd "$CONF/suite" && go list -m -f '{{.Dir}}' "$1")
  [[ -n $dir && -d $dir ]] || die "$1 has no source folder after download"
  printf '%s\n' "$dir"
}

conformance_module_dir() {
  suite_module_dir sigs.k8s.io/gateway-api/conformance
}

# The version of the conformance images module the suite builds with (its
# replacement's version).
images_version() {
  (cd "$CONF/suite" && go list -m -f '{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}' "$IMAGES_MODULE")
}

IMAGES_MODULE=sigs.k8s.io/gateway-api-conformance-images

build_echo_basic() {
  # Since Gateway API v1.7.0, echo-basic lives in the conformance images
  # module (the image the manifests run); build its echo-basic package from
  # a writable copy of the module.
  local src tmp
  src=$(suite_module_dir "$IMAGES_MODULE")
  [[ -d $src/echo-basic ]] || die "echo-basic not found in $src"
  tmp=$(mktemp -d)
  cp -r "$src/." "$tmp/"
  chmod -R u+w "$tmp"
  (cd "$tmp" && go build -trimpath -ldflags='-s -w' -o "$BIN/echo-basic" ./echo-basic) || { rm -rf "$tmp"; return 1; }
  rm -rf "$tmp"
}

write_versions() {
  local k8s etcd conf
  k8s=$(mod_version "$CONF/cluster/kube" k8s.io/kubernetes)
  etcd=$(mod_version "$CONF/cluster/etcd" go.etcd.io/etcd/server/v3)
  conf=$(mod_version "$CONF/suite" sigs.k8s.io/gateway-api/conformance)
  {
    echo "etcd go.etcd.io/etcd/server/v3 $etcd"
    echo "kube-apiserver k8s.io/kubernetes $k8s"
    echo "kube-controller-manager k8s.io/kubernetes $k8s"
    echo "kubectl k8s.io/kubernetes $k8s"
    echo "echo-basic $IMAGES_MODULE $(images_version)"
    echo "suite sigs.k8s.io/gateway-api/conformance $conf"
    echo "go $(go env GOVERSION)"
  } >"$BIN/VERSIONS"
}

cmd_build() {
  need go
  mkdir -p "$BIN"
  # A binary built from other versions than the pinned ones is rebuilt.
  if [[ -f $BIN/VERSIONS ]]; then
    cp "$BIN/VERSIONS" "$BIN/VERSIONS.old"
    write_versions
    if ! cmp -s "$BIN/VERSIONS" "$BIN/VERSIONS.old"; then
      log "pinned versions changed; rebuilding everything"
      rm -f "$BIN/etcd" "$BIN/kube-apiserver" "$BIN/kube-controller-manager" "$BIN/kubectl" "$BIN/echo-basic"
    fi
    rm -f "$BIN/VERSIONS.old"
  fi
  local missing=() b
  for b in kube-apiserver kube-controller-manager kubectl; do
    [[ -x $BIN/$b ]] || missing+=("$b")
  done
  if ((${#missing[@]})); then
    log "building ${missing[*]} (k8s.io/kubernetes $(mod_version "$CONF/cluster/kube" k8s.io/kubernetes); slow the first time)"
    timed "${missing[*]}" build_kube "${missing[@]}"
  fi
  if [[ ! -x $BIN/etcd ]]; then
    log "building etcd"
    timed etcd build_etcd
  fi
  if [[ ! -x $BIN/echo-basic ]]; then
    log "building echo-basic"
    timed echo-basic build_echo_basic
  fi
  write_versions
  log "binaries in $BIN:"
  (cd "$BIN" && ls -l etcd kube-apiserver kube-controller-manager kubectl echo-basic | awk '{printf "  %-24s %6.1f MB\n", $9, $5/1048576}') >&2
}

# ------------------------------------------------------------ processes ----

pidfile() { echo "$RUN/$1.pid"; }

# is_component pid component: the process runs that component's binary (a
# pid file never makes us signal a recycled pid).
is_component() {
  local exe
  exe=$(head -z -n1 "/proc/$1/cmdline" 2>/dev/null | tr -d '\0') || return 1
  [[ ${exe##*/} == *"$2" ]]
}

alive() { # component
  local f pid
  f=$(pidfile "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ -n $pid ]] && is_component "$pid" "$1"
}

# start component command... : runs the command inside the namespace, in a
# session of its own, detached, logging to $RUN/<component>.log.
start() {
  local name=$1
  shift
  if alive "$name"; then
    log "$name already running (pid $(<"$(pidfile "$name")"))"
    return 0
  fi
  # The background child is not a process-group leader, so setsid does not
  # fork and ip netns exec execs: $! is the component's own pid.
  setsid ip netns exec "$NS" "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
  log "started $name (pid $!, log ${RUN#"$ROOT"/}/$name.log)"
}

stop() { # component
  local f pid i
  f=$(pidfile "$1")
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  if [[ -n $pid ]] && is_component "$pid" "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1 (pid $pid) did not stop within 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

# Waits up to $1 seconds for the command to succeed.
wait_for() {
  local timeout=$1 what=$2 i
  shift 2
  for ((i = 0; i < timeout * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

fail_up() { # component message
  log "$2"
  if [[ -f $RUN/$1.log ]]; then
    log "last lines of ${RUN#"$ROOT"/}/$1.log:"
    tail -n 25 "$RUN/$1.log" >&2
  fi
  die "'up' failed; run '$0 down' to clean up"
}

# ----------------------------------------------------------------- up ------

# Named network namespaces, one a line (ip netns list also shows ids, and
# complains about namespaces another process is creating right now).
netns_names() { ls -1 /run/netns 2>/dev/null || true; }
netns_exists() { [[ -e /run/netns/$1 ]]; }

setup_netns() {
  if ! netns_exists "$NS"; then
    ip netns add "$NS"
    log "created network namespace $NS"
  fi
  ip -n "$NS" link set lo up
  if ! ip -n "$NS" link show "$BRIDGE" >/dev/null 2>&1; then
    ip -n "$NS" link add "$BRIDGE" type bridge
  fi
  if ! ip -n "$NS" -4 addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/"; then
    ip -n "$NS" addr add "$NODE_IP/16" dev "$BRIDGE"
  fi
  ip -n "$NS" link set "$BRIDGE" up
}

setup_pki() {
  mkdir -p "$PKI/apiserver" "$PKI/controller-manager"
  if [[ ! -f $PKI/sa.key ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI/sa.key"
  fi
  if [[ ! -f $PKI/tokens.csv ]]; then
    local admin kcm
    admin=$(openssl rand -hex 24)
    kcm=$(openssl rand -hex 24)
    # token,user,uid,"groups"
    {
      echo "$admin,admin,admin,\"system:masters\""
      echo "$kcm,system:kube-controller-manager,kube-controller-manager"
    } >"$PKI/tokens.csv"
    chmod 600 "$PKI/tokens.csv"
    echo "$admin" >"$PKI/admin.token"
    echo "$kcm" >"$PKI/kcm.token"
  fi
  # The API server's serving certificate, from a CA of our own: valid for
  # every name a client uses (loopback here, the node IP and the kubernetes
  # Service from pods), so in-cluster clients verify it with ca.crt.
  if [[ ! -f $PKI/apiserver/serving.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=gwr-conf-ca \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
      -keyout "$PKI/apiserver/serving.key" -out "$PKI/apiserver/serving.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' \
      "IP:127.0.0.1,IP:$NODE_IP,IP:${SERVICE_CIDR%.0/*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      >"$PKI/apiserver/serving.ext"
    openssl x509 -req -in "$PKI/apiserver/serving.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -CAcreateserial -days 30 -extfile "$PKI/apiserver/serving.ext" \
      -out "$PKI/apiserver/serving.crt" 2>/dev/null
    chmod 600 "$PKI/ca.key" "$PKI/apiserver/serving.key"
  fi
}

write_kubeconfig() { # file token ca-file
  local ca
  ca=$(base64 -w0 <"$3")
  rm -f "$1.tmp"
  touch "$1.tmp"
  chmod 600 "$1.tmp"
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gwr-conf
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $ca
users:
- name: user
  user:
    token: $(<"$2")
contexts:
- name: gwr-conf
  context:
    cluster: gwr-conf
    user: user
current-context: gwr-conf
EOF
  mv -f "$1.tmp" "$1" # readers never see a half-written file
}

# The image map the node agent gets: every echo-basic image of the suite's
# base manifests maps to our echo-basic build, its coredns image to the
# node agent's DNS server (`gatewright-node-agent dns`). Generated
# from the conformance module so that image references are never spelled
# out in this repository.
write_image_map() {
  local src out=$RUN/images.yaml repo
  src=$(conformance_module_dir)
  {
    echo "# Generated by conformance/cluster.sh from the conformance module's base manifests."
    grep -ho 'image: *[^ ]*' "$src"/base/*.yaml | awk '{print $2}' | sed 's/[:@][^/]*$//' | sort -u |
      while read -r repo; do
        case $repo in
          */echo-basic) printf -- '- image: "%s:"\n  binary: %s\n' "$repo" "$BIN/echo-basic" ;;
          # Used by the UDPRoute test: the node agent's own DNS server
          # answers as its Corefile's `whoami` zone does (A = the asking
          # client) and refuses every other name (it never forwards).
          */coredns) printf -- '- image: "%s:"\n  binary: %s\n  args: ["dns", "--listen", "0.0.0.0:53", "--whoami", "foo.bar.com"]\n' "$repo" "$NODE_AGENT" ;;
        esac
      done
    # Hand-maintained entries; $BIN stands for the binaries folder, $ROOT
    # for the tree's root.
    grep -v '^[[:space:]]*#' "$CONF/cluster/images.yaml" | grep -v '^[[:space:]]*$' |
      sed -e "s#\$BIN#$BIN#g" -e "s#\$ROOT#$ROOT#g" || true
  } >"$out"
}

cmd_up() {
  need_root up
  need ip nft openssl curl base64 setsid
  for b in etcd kube-apiserver kube-controller-manager; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing; run '$0 build' first"
  done
  mkdir -p "$RUN"
  setup_netns
  setup_pki

  start etcd "$BIN/etcd" \
    --name gwr-conf \
    --data-dir "$RUN/etcd" \
    --listen-client-urls "$ETCD_URL" \
    --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster gwr-conf=http://127.0.0.1:2380 \
    --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync \
    --log-level warn
  wait_for 30 etcd ip netns exec "$NS" curl -sf "http://127.0.0.1:2381/health" ||
    fail_up etcd "etcd did not become healthy within 30 s"

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "$ETCD_URL" \
    --bind-address 0.0.0.0 \
    --secure-port 6443 \
    --advertise-address "$NODE_IP" \
    --tls-cert-file "$PKI/apiserver/serving.crt" \
    --tls-private-key-file "$PKI/apiserver/serving.key" \
    --authorization-mode Node,RBAC \
    --token-auth-file "$PKI/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --enable-admission-plugins NodeRestriction \
    --disable-admission-plugins StorageObjectInUseProtection,PersistentVolumeClaimResize,DefaultStorageClass \
    --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP \
    --profiling=false \
    --v 1
  local token
  token=$(<"$PKI/admin.token")
  wait_for 120 readyz ip netns exec "$NS" curl -skf -H "Authorization: Bearer $token" "$APISERVER_URL/readyz" ||
    fail_up kube-apiserver "kube-apiserver not ready within 120 s"
  write_kubeconfig "$KUBECONFIG_FILE" "$PKI/admin.token" "$PKI/ca.crt"
  write_kubeconfig "$RUN/controller-manager.kubeconfig" "$PKI/kcm.token" "$PKI/ca.crt"
  local ready=(ip netns exec "$NS" curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $token")
  "${ready[@]}" "$APISERVER_URL/readyz" >/dev/null ||
    fail_up kube-apiserver "kube-apiserver's certificate does not verify against ${PKI#"$ROOT"/}/ca.crt"
  log "kube-apiserver is ready"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$RUN/controller-manager.kubeconfig" \
    --use-service-account-credentials=true \
    --controllers "$KCM_CONTROLLERS" \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --leader-elect=false \
    --bind-address 127.0.0.1 \
    --secure-port 10257 \
    --cert-dir "$PKI/controller-manager" \
    --profiling=false \
    --v 1
  # The default ServiceAccount is made by the serviceaccount controller:
  # pods can be created once it exists.
  wait_for 90 default-sa "${ready[@]}" "$APISERVER_URL/api/v1/namespaces/default/serviceaccounts/default" ||
    fail_up kube-controller-manager "no default ServiceAccount within 90 s"
  wait_for 60 root-ca "${ready[@]}" "$APISERVER_URL/api/v1/namespaces/default/configmaps/kube-root-ca.crt" ||
    fail_up kube-controller-manager "no kube-root-ca.crt ConfigMap within 60 s"
  log "namespaces and service accounts work"

  if [[ -x $NODE_AGENT ]]; then
    write_image_map
    mkdir -p "$RUN/node"
    start node-agent "$NODE_AGENT" \
      --kubeconfig "$KUBECONFIG_FILE" \
      --node-name gwr-node \
      --node-ip "$NODE_IP" \
      --pod-cidr "$POD_CIDR" \
      --bridge "$BRIDGE" \
      --state-dir "$RUN/node" \
      --image-map "$RUN/images.yaml" \
      --kubelet-port 10250
    # Bounded wait for the Node to be Ready.
    if wait_for 60 node "${ready[@]}" "$APISERVER_URL/api/v1/nodes/gwr-node"; then
      log "node gwr-node registered"
    else
      fail_up node-agent "node agent did not register node gwr-node within 60 s"
    fi
  else
    log "no node agent at ${NODE_AGENT#"$ROOT"/} (cargo build -p gatewright-node-agent); pods will stay Pending"
  fi
  log "cluster is up; kubeconfig: $KUBECONFIG_FILE (use '$0 exec kubectl ...')"
}

# --------------------------------------------------------------- down ------

kill_pids() { # pids...: TERM, bounded wait, KILL
  local pid i left
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    left=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

cmd_down() {
  need_root down
  local i ns pids m
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop "${COMPONENTS[i]}"
  done
  # Anything still running inside our namespaces (pod processes the agent
  # left, strays) was started by us: stop it before deleting the namespaces.
  for ns in $(netns_names | grep -E "^(gwrp-.*|$NS)\$" || true); do
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
    if ((${#pids[@]})); then
      log "stopping ${#pids[@]} leftover process(es) in $ns: ${pids[*]}"
      kill_pids "${pids[@]}"
    fi
  done
  # Mounts the agent may have left under its state dir (volumes).
  if [[ -d $RUN ]]; then
    while read -r m; do
      [[ -n $m ]] || continue
      umount -l "$m" 2>/dev/null && log "unmounted $m" || true
    done < <(findmnt -rn -o TARGET | awk -v r="$RUN" 'index($0, r) == 1' | sort -r)
  fi
  for ns in $(netns_names | grep -E "^gwrp-" || true); do
    ip netns del "$ns" && log "deleted network namespace $ns"
  done
  if netns_exists "$NS"; then
    ip netns del "$NS"
    log "deleted network namespace $NS"
  fi
  rm -rf "$RUN" "$KUBECONFIG_FILE"
  log "down"
}

# ------------------------------------------------- crds, exec, status ------

cmd_crds() {
  need_root crds
  local dir=$ROOT/crds/gateway-api-v1.7.0/experimental
  [[ -x $BIN/kubectl ]] || die "$BIN/kubectl is missing; run '$0 build' first"
  [[ -f $KUBECONFIG_FILE ]] || die "no kubeconfig; run '$0 up' first"
  ip netns exec "$NS" env KUBECONFIG="$KUBECONFIG_FILE" "$BIN/kubectl" apply --server-side -k "$dir" >&2
  ip netns exec "$NS" env KUBECONFIG="$KUBECONFIG_FILE" "$BIN/kubectl" wait --for condition=Established \
    --timeout 60s crd --all >&2
  log "Gateway API v1.7.0 experimental CRDs installed"
}


cmd_exec() {
  need_root exec
  (($#)) || die "usage: $0 exec CMD [ARGS...]"
  netns_exists "$NS" || die "namespace $NS does not exist; run '$0 up' first"
  export KUBECONFIG="$KUBECONFIG_FILE"
  export PATH="$BIN:$PATH"
  exec ip netns exec "$NS" "$@"
}

cmd_status() {
  local c f up=0
  if netns_exists "$NS"; then
    echo "network namespace $NS: present"
    up=1
  else
    echo "network namespace $NS: absent"
  fi
  for c in "${COMPONENTS[@]}"; do
    f=$(pidfile "$c")
    if alive "$c"; then
      echo "$c: running (pid $(<"$f"))"
    elif [[ -f $f ]]; then
      echo "$c: DEAD (pid $(<"$f"); see ${RUN#"$ROOT"/}/$c.log)"
    else
      echo "$c: not started"
    fi
  done
  if ((up)) && [[ -f $PKI/admin.token ]]; then
    if ip netns exec "$NS" curl -sf --max-time 3 --cacert "$PKI/ca.crt" \
      -H "Authorization: Bearer $(<"$PKI/admin.token")" "$APISERVER_URL/readyz" >/dev/null 2>&1; then
      echo "kube-apiserver /readyz: ok"
    else
      echo "kube-apiserver /readyz: not ready"
    fi
  fi
  local pods
  pods=$(netns_names | grep -c '^gwrp-' || true)
  echo "pod network namespaces (gwrp-*): $pods"
}

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

main() {
  (($#)) || usage 1
  local cmd=$1
  shift
  case $cmd in
    build) cmd_build "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    crds) cmd_crds "$@" ;;
    exec) cmd_exec "$@" ;;
    status) cmd_status "$@" ;;
    -h | --help | help) usage 0 ;;
    *) log "unknown command '$cmd'"; usage 1 ;;
  esac
}

main "$@"
