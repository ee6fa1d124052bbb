#!/usr/bin/env bash
# Checks the Helm chart charts/gatewright: `make chart` and CI run this.
#
# 1. Builds the pinned Helm from its Go module into .tools/helm/bin/helm
#    unless that exact version is already there (needs Go; ~4 min cold).
#    With --helm-only, stops here.
# 2. helm lint (plain and --strict, with the CRD subchart).
# 3. helm template in several configurations, and checks each rendering
#    with Python (PyYAML): well-formed objects, the controller Deployment's
#    contract (flags, env, probes, security), RBAC without wildcards, the
#    CRDs of exactly the chosen channel (and equal to the sources in crds/),
#    the GatewayClass and PodDisruptionBudget only when they should be,
#    image references without a registry host.
# 4. helm package, and checks the package: CRDs reached through the
#    symbolic link are inside, the package renders like the directory, and
#    the release record Helm would store stays far below its 1 MiB limit.
# 5. With kubectl available, a client-side dry run of the rendering, if it
#    works without a cluster (it usually needs one: then it is skipped).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
CHART="charts/gatewright"
NAMESPACE="gatewright-system"
RELEASE="gw"

# Helm 3's latest stable release as of this chart; it builds with Go 1.26.
HELM_VERSION="v3.22.0"
HELM_DIR="$ROOT/.tools/helm"
HELM="$HELM_DIR/bin/helm"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Keep Helm's cache, configuration and plugins out of $HOME.
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"

section() { echo "--- chart: $*"; }

# ---------------------------------------------------------------------------
# Helm
# ---------------------------------------------------------------------------

# The version a binary was built from, from the Go build information, plus
# whether our version ldflags are in it (a plain `go install` leaves Helm
# reporting "v3.22" and Kubernetes v1.20 as its default target).
helm_build_ok() {
  [ -x "$HELM" ] || return 1
  local info
  info="$(go version -m "$HELM" 2>/dev/null)" || return 1
  grep -qE "^[[:space:]]+mod[[:space:]]+helm\.sh/helm/v3[[:space:]]+${HELM_VERSION}[[:space:]]" <<<"$info" &&
    grep -q "internal/version.version=${HELM_VERSION}" <<<"$info"
}

if helm_build_ok; then
  section "helm ${HELM_VERSION} already built at .tools/helm/bin/helm"
else
  section "building helm ${HELM_VERSION} from its Go module (a few minutes)"
  # The Kubernetes version Helm targets by default (Capabilities.KubeVersion,
  # lint's deprecation checks) is one past its client-go minor version, the
  # way Helm's own release build sets it.
  gomod="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')"
  client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"
  if [[ ! "$client_go" =~ ^v0\.([0-9]+)\. ]]; then
    echo "error: cannot find k8s.io/client-go's version in $gomod" >&2
    exit 1
  fi
  k8s_minor="${BASH_REMATCH[1]}"
  ldflags="-s -w"
  ldflags+=" -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${k8s_minor}"
  done
  rm -rf "$HELM_DIR"
  mkdir -p "$HELM_DIR/bin"
  GOBIN="$HELM_DIR/bin" CGO_ENABLED=0 go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  helm_build_ok || { echo "error: $HELM is not helm ${HELM_VERSION} after building it" >&2; exit 1; }
fi
"$HELM" version
# `--helm-only`: just make sure Helm is built (`make test` needs it for
# the chart-RBAC integration test).
if [[ "${1:-}" == "--helm-only" ]]; then
  exit 0
fi

# PyYAML for the checks; installed beside Helm if this Python lacks it.
if ! python3 -c 'import yaml' 2>/dev/null; then
  if ! PYTHONPATH="$ROOT/.tools/pyyaml" python3 -c 'import yaml' 2>/dev/null; then
    section "installing PyYAML into .tools/pyyaml"
    python3 -m pip install --disable-pip-version-check --quiet --target "$ROOT/.tools/pyyaml" pyyaml
  fi
  export PYTHONPATH="$ROOT/.tools/pyyaml${PYTHONPATH:+:$PYTHONPATH}"
fi

# Helm says so on stderr each time it follows the chart's symbolic link to
# crds/ (files/crds); that is intended (see the chart's README), so those
# lines are dropped, and anything else Helm prints on stderr is kept.
helm_() {
  "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2)
}

# ---------------------------------------------------------------------------
# Lint
# ---------------------------------------------------------------------------

section "helm lint"
helm_ lint "$CHART" --with-subcharts
section "helm lint --strict"
helm_ lint "$CHART" --with-subcharts --strict
section "helm lint --strict, experimental channel, one replica"
helm_ lint "$CHART" --with-subcharts --strict --set crds.channel=experimental --set replicaCount=1

# ---------------------------------------------------------------------------
# Renderings
# ---------------------------------------------------------------------------

# Each case: a name and the flags for `helm template`. The expectations of
# each case are in the Python below, under the same name. The API version
# flag stands for a cluster that already has the Gateway API CRDs.
HAS_GWC="--api-versions=gateway.networking.k8s.io/v1/GatewayClass"
cases=(
  "default|"
  "default-crds-present|$HAS_GWC"
  "experimental|--set crds.channel=experimental $HAS_GWC"
  "one-replica|--set replicaCount=1"
  "no-gatewayclass|--set gatewayClass.create=false $HAS_GWC"
  "no-crds|--set crds.install=false"
  "safe-upgrades-policy|--set crds.safeUpgradesPolicy=true --set crds.keep=false"
  "overrides|--set fullnameOverride=edge --set gatewayClass.name=edge --set podAntiAffinity=hard --set metricsService.enabled=false --set image.tag=1.2.3 --set rbac.create=true --set crds.install=false"
)
mkdir -p "$WORK/render"
for entry in "${cases[@]}"; do
  name="${entry%%|*}"
  read -r -a flags <<<"${entry#*|}"
  section "helm template ($name): ${flags[*]:-default values}"
  helm_ template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${flags[@]}" >"$WORK/render/$name.yaml"
  echo "$(grep -c '^kind:' "$WORK/render/$name.yaml") objects, $(wc -c <"$WORK/render/$name.yaml") bytes"
done

# Values the chart must refuse.
for bad in "crds.channel=nightly" "podAntiAffinity=sometimes"; do
  if "$HELM" template "$RELEASE" "$CHART" --set "$bad" >/dev/null 2>"$WORK/bad.err"; then
    echo "error: helm template accepted --set $bad" >&2
    exit 1
  fi
  echo "helm template --set $bad fails as it should: $(grep -o 'must be [^:]*' "$WORK/bad.err" | head -1)"
done

# ---------------------------------------------------------------------------
# Package
# ---------------------------------------------------------------------------

section "helm package"
helm_ package "$CHART" --destination "$WORK/package" >/dev/null
package="$WORK/package/gatewright-0.1.0.tgz"
echo "$(basename "$package"): $(wc -c <"$package") bytes"
tar -tzf "$package" | sort >"$WORK/package.list"
helm_ template "$RELEASE" "$package" --namespace "$NAMESPACE" >"$WORK/render/packaged.yaml"
helm_ template "$RELEASE" "$package" --namespace "$NAMESPACE" --set crds.channel=experimental "$HAS_GWC" \
  >"$WORK/render/packaged-experimental.yaml"

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

section "checking the renderings"
python3 - "$ROOT" "$WORK" "$NAMESPACE" "$RELEASE" <<'PY'
import base64, glob, gzip, json, os, sys, tarfile
import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
root, work, namespace, release = sys.argv[1:5]
failures = []
checked = 0


def check(ok, what):
    global checked
    checked += 1
    if not ok:
        failures.append(what)


def load(path):
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=Loader) if d is not None]


# --- what the CRDs must be: the sources in crds/ ---------------------------
bundle = os.path.join(root, "crds", "gateway-api-v1.7.0")


def source_objects(paths):
    objects = {}
    for path in sorted(paths):
        for doc in load(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def is_bundle_crd_file(path):
    base = os.path.basename(path)
    return base != "kustomization.yaml" and not base.endswith("_vap_safeupgrades.yaml")


own_crds = source_objects(glob.glob(os.path.join(root, "crds", "gatewright", "*.yaml")))
channel_crds = {
    channel: {**source_objects(p for p in glob.glob(os.path.join(bundle, channel, "*.yaml")) if is_bundle_crd_file(p)), **own_crds}
    for channel in ("standard", "experimental")
}
vap = {channel: source_objects(glob.glob(os.path.join(bundle, channel, "*_vap_safeupgrades.yaml"))) for channel in channel_crds}
print(f"sources: {len(channel_crds['standard']) - len(own_crds)} standard and "
      f"{len(channel_crds['experimental']) - len(own_crds)} experimental Gateway API CRDs, "
      f"{len(own_crds)} Gatewright CRD(s) in crds/gatewright/")
check(len(channel_crds["standard"]) >= 8 and len(channel_crds["experimental"]) > len(channel_crds["standard"]),
      "the CRD sources in crds/ are missing")

CHART_ANNOTATIONS = {"helm.sh/resource-policy"}
CHART_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                "app.kubernetes.io/managed-by", "helm.sh/chart"}
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "GatewayClass",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Namespace"}


def without_chart_metadata(obj):
    """The object as the chart found it: minus the labels and the keep
    annotation the chart adds."""
    obj = json.loads(json.dumps(obj))
    meta = obj["metadata"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in CHART_LABELS}
    meta.pop("labels", None)
    if labels:
        meta["labels"] = labels
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in CHART_ANNOTATIONS}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    return obj


def source_object(obj):
    """A source object the way it compares with without_chart_metadata()."""
    obj = json.loads(json.dumps(obj))
    for field in ("labels", "annotations"):
        if not obj["metadata"].get(field):
            obj["metadata"].pop(field, None)
    return obj


def image_host_free(image):
    # A registry host is a first path component with a "." or ":" in it,
    # or "localhost": none may appear (images are short names).
    first = image.split("/")[0]
    return "/" not in image or not ("." in first or ":" in first or first == "localhost")


def check_case(case, docs, *, channel="standard", crds=True, keep=True, vap_on=False, gatewayclass=None,
               replicas=2, pdb=True, fullname=f"{release}-gatewright", metrics=True, antiaffinity="preferred",
               tag="0.1.0"):
    where = f"[{case}]"
    by_kind = {}
    seen = set()
    for d in docs:
        kind, meta = d.get("kind"), d.get("metadata") or {}
        check(bool(d.get("apiVersion")) and bool(kind) and bool(meta.get("name")),
              f"{where} an object lacks apiVersion, kind or metadata.name: {str(d)[:120]}")
        key = (kind, meta.get("namespace"), meta.get("name"))
        check(key not in seen, f"{where} duplicate object {key}")
        seen.add(key)
        if kind not in CLUSTER_SCOPED:
            check(meta.get("namespace") == namespace, f"{where} {kind} {meta.get('name')} is not in namespace {namespace}")
        by_kind.setdefault(kind, []).append(d)

    # CRDs: exactly the channel's, each equal to its source.
    rendered_crds = {d["metadata"]["name"]: d for d in by_kind.get("CustomResourceDefinition", [])}
    expected = {name: obj for (kind, name), obj in channel_crds[channel].items()} if crds else {}
    check(set(rendered_crds) == set(expected),
          f"{where} CRDs differ from the {channel} channel's: extra {sorted(set(rendered_crds) - set(expected))}, "
          f"missing {sorted(set(expected) - set(rendered_crds))}")
    for name, crd in rendered_crds.items():
        if name in expected:
            check(without_chart_metadata(crd) == source_object(expected[name]),
                  f"{where} CRD {name} differs from its source file")
        has_keep = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
        check(has_keep == keep, f"{where} CRD {name}: keep annotation is {has_keep}, expected {keep}")
        want_channel = crd["metadata"].get("annotations", {}).get("gateway.networking.k8s.io/channel")
        check(want_channel in (None, channel), f"{where} CRD {name} is from the {want_channel} channel")
    vaps = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    want_vaps = vap[channel] if (crds and vap_on) else {}
    check({(d["kind"], d["metadata"]["name"]) for d in vaps} == set(want_vaps),
          f"{where} admission policy objects: {[d['metadata']['name'] for d in vaps]}")
    for d in vaps:
        src = want_vaps.get((d["kind"], d["metadata"]["name"]))
        check(src is not None and without_chart_metadata(d) == source_object(src),
              f"{where} {d['kind']} differs from its source file")
    check("Kustomization" not in by_kind, f"{where} kustomization.yaml was rendered")

    # The Deployment and the contract of the controller's command line.
    deployments = by_kind.get("Deployment", [])
    check(len(deployments) == 1, f"{where} expected one Deployment, got {len(deployments)}")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    xds_service = f"{fullname}-xds"
    check(xds_service in services, f"{where} no xDS Service {xds_service}")
    check((f"{fullname}-metrics" in services) == metrics, f"{where} metrics Service presence should be {metrics}")
    if deployments:
        dep = deployments[0]
        check(dep["metadata"]["name"] == fullname, f"{where} Deployment is named {dep['metadata']['name']}")
        check(dep["spec"].get("replicas") == replicas, f"{where} replicas {dep['spec'].get('replicas')} != {replicas}")
        pod = dep["spec"]["template"]
        selector = dep["spec"]["selector"]["matchLabels"]
        check(all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items()),
              f"{where} the pod template's labels do not match the Deployment's selector")
        spec = pod["spec"]
        (c,) = spec["containers"]
        check(c["image"] == f"gatewright/gatewright:{tag}", f"{where} controller image {c['image']}")
        args = c.get("args", [])
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        check(args[:1] == ["controller"], f"{where} the first argument is not the controller subcommand: {args[:1]}")
        want_flags = {
            "infrastructure": "kubernetes",
            "namespace": "$(POD_NAMESPACE)",
            "identity": "$(POD_NAME)",
            "lease-name": "gatewright-controller",
            "xds-address": "0.0.0.0:18000",
            "admin-address": "0.0.0.0:18001",
            "controller-name": "gatewright.dev/gateway-controller",
            "xds-service": xds_service,
            "envoy-image": "envoyproxy/envoy:v1.40.0",
            "log-level": "info",
        }
        for flag, value in want_flags.items():
            check(flags.get(flag) == value, f"{where} --{flag} is {flags.get(flag)!r}, expected {value!r}")
        env = {e["name"]: e for e in c.get("env", [])}
        for var, path in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")):
            got = env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            check(got == path, f"{where} env {var} is not from fieldRef {path}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        check(ports == {"xds": 18000, "admin": 18001}, f"{where} container ports {ports}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            check(get.get("path") == path and get.get("port") in ("admin", 18001),
                  f"{where} {probe} is not GET {path} on the admin port: {get}")
        sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{where} root filesystem is writable")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where} privilege escalation allowed")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where} capabilities not all dropped")
        check(True in (sc.get("runAsNonRoot"), psc.get("runAsNonRoot")), f"{where} runAsNonRoot not set")
        check((psc.get("runAsUser") or sc.get("runAsUser") or 0) != 0, f"{where} runs as root")
        check("RuntimeDefault" in (psc.get("seccompProfile", {}).get("type"), sc.get("seccompProfile", {}).get("type")),
              f"{where} seccomp profile is not RuntimeDefault")
        res = c.get("resources", {})
        check(bool(res.get("requests")) and bool(res.get("limits", {}).get("memory")),
              f"{where} resources lack requests or a memory limit")
        anti = spec.get("affinity", {}).get("podAntiAffinity", {})
        got_anti = ("preferred" if anti.get("preferredDuringSchedulingIgnoredDuringExecution")
                    else "required" if anti.get("requiredDuringSchedulingIgnoredDuringExecution") else None)
        check(got_anti == antiaffinity, f"{where} pod anti-affinity is {got_anti}, expected {antiaffinity}")
        sa = spec.get("serviceAccountName")
        check(any(s["metadata"]["name"] == sa for s in by_kind.get("ServiceAccount", [])),
              f"{where} ServiceAccount {sa} is not rendered")
        for s in services.values():
            check(all(pod["metadata"]["labels"].get(k) == v for k, v in s["spec"]["selector"].items()),
                  f"{where} Service {s['metadata']['name']} does not select the controller pods")
        if xds_service in services:
            sp = services[xds_service]["spec"]
            check(sp.get("type") == "ClusterIP" and [(p["port"], p["targetPort"]) for p in sp["ports"]] == [(18000, "xds")],
                  f"{where} xDS Service is not ClusterIP with the single port 18000 -> xds")

    # Image references: short names only.
    images = [c["image"] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]]
    images += [f.split("=", 1)[1] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]
               for f in c.get("args", []) if f.startswith("--envoy-image=")]
    for image in images:
        check(image_host_free(image), f"{where} image {image} names a registry host")

    # RBAC: no wildcards, nothing that lets it grant itself more.
    roles = by_kind.get("ClusterRole", []) + by_kind.get("Role", [])
    check(len(by_kind.get("ClusterRole", [])) == 1 and len(by_kind.get("Role", [])) == 1,
          f"{where} expected one ClusterRole and one Role")
    for role in roles:
        for rule in role.get("rules", []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                check("*" not in rule.get(field, []) and not any("*" in x for x in rule.get(field, [])),
                      f"{where} {role['kind']} {role['metadata']['name']} has a wildcard in {field}: {rule}")
            check(not set(rule.get("verbs", [])) & {"escalate", "bind", "impersonate", "deletecollection"},
                  f"{where} {role['kind']} grants a dangerous verb: {rule}")
    cluster_rules = [r for role in by_kind.get("ClusterRole", []) for r in role["rules"]]
    check(not any("leases" in r.get("resources", []) for r in cluster_rules),
          f"{where} leases are granted cluster-wide")
    check(any("leases" in r.get("resources", []) for role in by_kind.get("Role", []) for r in role["rules"]),
          f"{where} the Role does not grant leases")
    granted = {(g, res, v) for r in cluster_rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    for res in ("gateways/status", "httproutes/status", "gatewayclasses/status"):
        check(("gateway.networking.k8s.io", res, "update") in granted, f"{where} cannot update {res}")
    for g, res in (("apps", "deployments"), ("", "services"), ("", "secrets"), ("", "configmaps"), ("", "serviceaccounts")):
        check((g, res, "create") in granted and (g, res, "delete") in granted, f"{where} cannot provision {res}")
    check(not any((g, "secrets", v) in granted for g in ("",) for v in ("deletecollection",)), f"{where} secrets deletecollection")
    # kube-runtime's event recorder creates, and patches repeats of,
    # events.k8s.io Events; it never reads them.
    for v in ("create", "patch"):
        check(("events.k8s.io", "events", v) in granted, f"{where} cannot {v} events.k8s.io events")
    check(not any((g, "events", v) in granted for g in ("", "events.k8s.io") for v in ("get", "list", "watch")),
          f"{where} events can be read")
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for b in by_kind.get(binding_kind, []):
            check(b["roleRef"]["kind"] == role_kind and any(r["metadata"]["name"] == b["roleRef"]["name"] for r in by_kind.get(role_kind, [])),
                  f"{where} {binding_kind} {b['metadata']['name']} refers to a missing {role_kind}")
            check(all(s["kind"] == "ServiceAccount" and s["namespace"] == namespace for s in b["subjects"]),
                  f"{where} {binding_kind} binds something else than the controller's ServiceAccount")

    # GatewayClass and PodDisruptionBudget only when they should be.
    classes = by_kind.get("GatewayClass", [])
    check([g["metadata"]["name"] for g in classes] == ([gatewayclass] if gatewayclass else []),
          f"{where} GatewayClasses {[g['metadata']['name'] for g in classes]}, expected {gatewayclass}")
    for g in classes:
        check(g["spec"]["controllerName"] == "gatewright.dev/gateway-controller", f"{where} GatewayClass controllerName")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    check(len(pdbs) == (1 if pdb else 0), f"{where} {len(pdbs)} PodDisruptionBudgets, expected {1 if pdb else 0}")
    print(f"{case}: {len(docs)} objects ({', '.join(f'{len(v)} {k}' for k, v in sorted(by_kind.items()))})")
    return docs


render = os.path.join(work, "render")
cases = {
    "default": dict(),
    "default-crds-present": dict(gatewayclass="gatewright"),
    "experimental": dict(channel="experimental", gatewayclass="gatewright"),
    "one-replica": dict(replicas=1, pdb=False),
    "no-gatewayclass": dict(),
    "no-crds": dict(crds=False, gatewayclass="gatewright"),
    "safe-upgrades-policy": dict(vap_on=True, keep=False),
    "overrides": dict(crds=False, gatewayclass="edge", fullname="edge", metrics=False, antiaffinity="required", tag="1.2.3"),
    "packaged": dict(),
    "packaged-experimental": dict(channel="experimental", gatewayclass="gatewright"),
}
docs = {case: check_case(case, load(os.path.join(render, f"{case}.yaml")), **expect) for case, expect in cases.items()}
with open(os.path.join(render, "default.yaml")) as a, open(os.path.join(render, "packaged.yaml")) as b:
    check(a.read() == b.read(), "the packaged chart renders differently from the chart directory")

# The package: the CRDs reached through the symbolic link are in it, the
# files that are not CRDs are not.
with open(os.path.join(work, "package.list")) as f:
    listed = f.read().split()
for channel in ("standard", "experimental"):
    for path in glob.glob(os.path.join(bundle, channel, "*.yaml")):
        inside = f"gatewright/charts/gatewright-crds/files/crds/gateway-api-v1.7.0/{channel}/{os.path.basename(path)}"
        check((inside in listed) == (os.path.basename(path) != "kustomization.yaml"),
              f"package: {inside} is {'missing' if inside not in listed else 'included'}")
for path in glob.glob(os.path.join(root, "crds", "gatewright", "*.yaml")):
    inside = f"gatewright/charts/gatewright-crds/files/crds/gatewright/{os.path.basename(path)}"
    check(inside in listed, f"package: {inside} is missing")
check(not any(p.endswith("/crds/README.md") for p in listed), "package: crds/README.md is included")

# The release record Helm stores (a Secret, at most 1 MiB): the release as
# JSON, gzip, base64, with the parent chart's files (not the subchart's) and
# the rendered manifest. Computed for the largest rendering.
with tarfile.open(os.path.join(work, "package", "gatewright-0.1.0.tgz")) as tar:
    parent_files = [m for m in tar.getmembers() if m.isfile() and not m.name.startswith("gatewright/charts/")]
    blob = {"chart": {m.name: base64.b64encode(tar.extractfile(m).read()).decode() for m in parent_files}}
with open(os.path.join(render, "experimental.yaml")) as f:
    blob["manifest"] = f.read()
record = len(base64.b64encode(gzip.compress(json.dumps(blob).encode())))
print(f"release record estimate: {record} bytes (limit 1048576)")
check(record < 600_000, f"the release record ({record} bytes) is close to the 1 MiB Secret limit")

print(f"{checked} checks, {len(failures)} failed")
for f in failures:
    print("FAIL:", f, file=sys.stderr)
sys.exit(1 if failures else 0)
PY

# ---------------------------------------------------------------------------
# kubectl (optional)
# ---------------------------------------------------------------------------

KUBECTL="$ROOT/.tools/k8s/bin/kubectl"
if [ -x "$KUBECTL" ]; then
  # A client-side dry run still asks an API server for the kinds; with no
  # cluster configured it cannot work, and then this is skipped.
  if KUBECONFIG=/dev/null "$KUBECTL" apply --dry-run=client --validate=false -f "$WORK/render/no-crds.yaml" \
    >"$WORK/kubectl.out" 2>&1; then
    section "kubectl apply --dry-run=client"
    cat "$WORK/kubectl.out"
  else
    section "kubectl dry run skipped: it needs an API server ($(head -c 160 "$WORK/kubectl.out" | tr '\n' ' '))"
  fi
fi

section "ok"
