#!/usr/bin/env python3
"""Writes the input of the side-by-side benchmark: one YAML stream that both
`gatewright translate` and `egctl x translate` read unchanged.

The shape, for N HTTPRoutes:

- one GatewayClass, with Envoy Gateway's controllerName (Gatewright is run
  with `--controller-name` set to the same value, so both own it);
- one Gateway `bench/gw` with one HTTP listener on port 8080;
- HTTPRoute i (0 <= i < N), in namespace `bench`, attached to that listener,
  with hostname `app-<i // 10>.example.com` (so ten routes share each
  hostname and the listener has ceil(N / 10) virtual hosts) and one rule:
  PathPrefix `/svc-<i>` to Service `svc-<i>` port 80;
- Service `svc-<i>` with a fixed clusterIP and one port 80;
- EndpointSlice `svc-<i>-1` for it, with one ready endpoint whose address is
  that Service's clusterIP and whose port is 80.

Why the EndpointSlice's endpoint is the clusterIP: `egctl x translate` does
not read EndpointSlices; it routes to a Service's clusterIP and port (its
translator runs with endpoint routing disabled). Gatewright, like the API
server's consumers, reads endpoints from EndpointSlices. Making the one
endpoint equal to the clusterIP:port gives both tools the same objects and
lets them produce the same endpoint for every cluster.

Usage: generate.py N OUT_FILE
"""

import ipaddress
import sys

CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"
NAMESPACE = "bench"
GATEWAY = "gw"
LISTENER_PORT = 8080
SERVICE_PORT = 80
ROUTES_PER_HOST = 10
# Service i gets BASE_IP + 1 + i: 10.96.0.0/12 holds far more than 5,000.
BASE_IP = ipaddress.IPv4Address("10.96.0.0")


def hostname(i: int) -> str:
    return f"app-{i // ROUTES_PER_HOST}.example.com"


def cluster_ip(i: int) -> str:
    return str(BASE_IP + 1 + i)


def header() -> str:
    return f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: bench
spec:
  controllerName: {CONTROLLER_NAME}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {GATEWAY}
  namespace: {NAMESPACE}
spec:
  gatewayClassName: bench
  listeners:
  - name: http
    port: {LISTENER_PORT}
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Same
"""


def route(i: int) -> str:
    name = f"svc-{i}"
    return f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: route-{i}
  namespace: {NAMESPACE}
spec:
  parentRefs:
  - name: {GATEWAY}
    sectionName: http
  hostnames:
  - {hostname(i)}
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /svc-{i}
    backendRefs:
    - name: {name}
      port: {SERVICE_PORT}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  clusterIP: {cluster_ip(i)}
  ports:
  - name: http
    port: {SERVICE_PORT}
    targetPort: {SERVICE_PORT}
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {NAMESPACE}
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: http
  port: {SERVICE_PORT}
  protocol: TCP
endpoints:
- addresses:
  - {cluster_ip(i)}
  conditions:
    ready: true
"""


def generate(n: int) -> str:
    if n < 1:
        raise ValueError("the number of HTTPRoutes must be at least 1")
    return header() + "".join(route(i) for i in range(n))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 64
    n = int(argv[1])
    with open(argv[2], "w", encoding="utf-8") as out:
        out.write(generate(n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
