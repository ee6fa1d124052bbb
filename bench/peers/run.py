#!/usr/bin/env python3
"""Side by side with Envoy Gateway: `egctl x translate --from gateway-api
--to xds` and `gatewright translate` on the same generated YAML, as whole
processes, alternating runs.

For each size (HTTPRoutes), this writes the input once (generate.py), then
runs the two tools alternately, up to --runs times each (at least
--min-runs; no new run starts once --size-budget seconds went on that size),
every run timed. After the first run it checks what both produced (Envoy
listeners, route configurations, virtual hosts, routes, clusters and
endpoints, virtual host domains, endpoint addresses); any difference fails
the whole run. It prints, per size, the median and min/max wall time, the
median CPU time, the median peak RSS (getrusage of the child) and the
ratios.

Both tools validate every input document against the Gateway API CRD
schemas and CEL rules before translating: egctl always does; Gatewright
does by default, and this never passes --skip-schema-validation.

Usage: run.py --egctl PATH --gatewright PATH [--sizes 100,750,5000]
              [--runs 7] [--min-runs 3] [--size-budget SECONDS]
              [--workdir DIR] [--timeout SECONDS] [--markdown FILE]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate  # noqa: E402
import yaml  # noqa: E402  (PyYAML; `make bench-peers` installs it if missing)


def load_yaml(text: str):
    """Parses one YAML document, with libyaml when PyYAML has it (5,000
    routes print tens of megabytes)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)

MAX_RUNS = 21
# Envoy Gateway adds one listener of its own to every proxy: the readiness
# probe's, answered by Envoy itself with a route configuration inline.
EG_READY_LISTENER_PREFIX = "envoy-gateway-proxy-ready"


# ---------------------------------------------------------------- running


class Sample:
    def __init__(self, wall: float, cpu: float, max_rss_kib: int):
        self.wall = wall
        self.cpu = cpu
        self.max_rss_kib = max_rss_kib


def run_once(argv: list[str], stdout_path: Path, stderr_path: Path, timeout: float):
    """Runs argv to completion; wall time from spawn to reaping, CPU time and
    peak RSS from the child's rusage. Returns (exit status, Sample)."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                os.wait4(child.pid, 0)
                raise SystemExit(f"error: {argv[0]} ran past {timeout:.0f} s; killed")
            time.sleep(0.002)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return child.returncode, Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


# ---------------------------------------------------------------- counting


class Counts:
    """What one tool produced for the benchmark's one Gateway."""

    FIELDS = [
        ("listeners", "Gateway listeners"),
        ("route_configs", "route configurations (RDS)"),
        ("virtual_hosts", "virtual hosts"),
        ("routes", "routes"),
        ("clusters", "clusters (CDS)"),
        ("load_assignments", "cluster load assignments (EDS)"),
        ("lb_endpoints", "endpoints in them"),
    ]

    def __init__(self):
        for field, _ in self.FIELDS:
            setattr(self, field, 0)
        self.domains: list[str] = []
        self.endpoint_addresses: list[str] = []
        self.extra: list[str] = []  # structure outside the comparison, said aloud

    def add_route_config(self, config: dict):
        self.route_configs += 1
        for vhost in config.get("virtualHosts") or []:
            self.virtual_hosts += 1
            self.domains.extend(vhost.get("domains") or [])
            self.routes += len(vhost.get("routes") or [])

    def add_load_assignment(self, cla: dict):
        self.load_assignments += 1
        for locality in cla.get("endpoints") or []:
            for lb in locality.get("lbEndpoints") or []:
                self.lb_endpoints += 1
                socket = lb["endpoint"]["address"]["socketAddress"]
                self.endpoint_addresses.append(f"{socket['address']}:{socket['portValue']}")


def egctl_counts(text: str) -> Counts:
    doc = load_yaml(text)
    gateways = (doc or {}).get("xds") or {}
    if len(gateways) != 1:
        raise SystemExit(f"error: egctl printed xDS for {len(gateways)} gateways, expected 1")
    (dump,) = gateways.values()
    counts = Counts()
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "BootstrapConfigDump":
            static = config["bootstrap"].get("staticResources") or {}
            names = [c["name"] for c in static.get("clusters") or []]
            counts.extra.append(
                f"bootstrap: {len(names)} static clusters of its own ({', '.join(names)})"
            )
        elif kind == "ListenersConfigDump":
            for entry in config.get("dynamicListeners") or []:
                listener = entry["activeState"]["listener"]
                if listener["name"].startswith(EG_READY_LISTENER_PREFIX):
                    counts.extra.append(
                        f"listener {listener['name']}: readiness probe, "
                        "route configuration inline (not counted)"
                    )
                    continue
                counts.listeners += 1
        elif kind == "RoutesConfigDump":
            for entry in config.get("dynamicRouteConfigs") or []:
                counts.add_route_config(entry["routeConfig"])
        elif kind == "ClustersConfigDump":
            counts.clusters += len(config.get("dynamicActiveClusters") or [])
            counts.clusters += len(config.get("dynamicWarmingClusters") or [])
        elif kind == "EndpointsConfigDump":
            for entry in config.get("dynamicEndpointConfigs") or []:
                counts.add_load_assignment(entry["endpointConfig"])
    return counts


def gatewright_counts(text: str) -> Counts:
    doc = load_yaml(text)
    gateways = (doc or {}).get("gateways") or {}
    if len(gateways) != 1:
        raise SystemExit(
            f"error: gatewright printed configuration for {len(gateways)} gateways, expected 1"
        )
    (resources,) = gateways.values()
    counts = Counts()
    counts.listeners = len(resources.get("listeners") or [])
    for config in resources.get("routes") or []:
        counts.add_route_config(config)
    counts.clusters = len(resources.get("clusters") or [])
    for cla in resources.get("endpoints") or []:
        counts.add_load_assignment(cla)
    unknown = sorted(
        key
        for key, value in resources.items()
        if value and key not in {"listeners", "routes", "clusters", "endpoints"}
    )
    if unknown:
        counts.extra.append(f"other resources: {', '.join(unknown)}")
    return counts


def compare(size: int, eg: Counts, gw: Counts) -> list[str]:
    """Lines for the report; SystemExit if the two differ."""
    lines = [f"{size} HTTPRoutes: what each produced for Gateway bench/gw"]
    lines.append(f"  {'':34} {'egctl':>8} {'gatewright':>11}")
    differ = []
    for field, label in Counts.FIELDS:
        a, b = getattr(eg, field), getattr(gw, field)
        mark = "" if a == b else "  <-- differs"
        lines.append(f"  {label:34} {a:>8} {b:>11}{mark}")
        if a != b:
            differ.append(label)
    same_domains = sorted(eg.domains) == sorted(gw.domains)
    same_addresses = sorted(eg.endpoint_addresses) == sorted(gw.endpoint_addresses)
    lines.append(f"  virtual host domains identical: {'yes' if same_domains else 'NO'}")
    lines.append(f"  endpoint addresses identical:   {'yes' if same_addresses else 'NO'}")
    for who, counts in (("egctl", eg), ("gatewright", gw)):
        for note in counts.extra:
            lines.append(f"  {who} also: {note}")
    if not same_domains:
        differ.append("virtual host domains")
    if not same_addresses:
        differ.append("endpoint addresses")
    if differ:
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(f"error: at {size} HTTPRoutes the outputs differ in: {', '.join(differ)}")
    return lines


# ---------------------------------------------------------------- reporting


def machine() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    load = os.getloadavg()
    return [
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, "
        f"{mem_kib / 1024 / 1024:.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.2f}"


def fmt_mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def table(rows: list[tuple[int, list[Sample], list[Sample]]]) -> list[str]:
    out = [
        "| HTTPRoutes | tool | runs | wall median (s) | wall min–max (s) | CPU median (s) "
        "| peak RSS median | wall ratio | CPU ratio | RSS ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, eg, gw in rows:
        eg_wall = statistics.median(s.wall for s in eg)
        gw_wall = statistics.median(s.wall for s in gw)
        eg_cpu = statistics.median(s.cpu for s in eg)
        gw_cpu = statistics.median(s.cpu for s in gw)
        eg_rss = statistics.median(s.max_rss_kib for s in eg)
        gw_rss = statistics.median(s.max_rss_kib for s in gw)
        for name, samples, ratios in (
            ("egctl", eg, ("", "", "")),
            (
                "gatewright",
                gw,
                (
                    f"{eg_wall / gw_wall:.1f}× faster",
                    f"{eg_cpu / gw_cpu:.1f}× less",
                    f"{eg_rss / gw_rss:.1f}× less",
                ),
            ),
        ):
            walls = [s.wall for s in samples]
            out.append(
                f"| {size:,} | {name} | {len(samples)} | {fmt_s(statistics.median(walls))} "
                f"| {fmt_s(min(walls))}–{fmt_s(max(walls))} "
                f"| {fmt_s(statistics.median(s.cpu for s in samples))} "
                f"| {fmt_mib(statistics.median(s.max_rss_kib for s in samples))} "
                f"| {ratios[0]} | {ratios[1]} | {ratios[2]} |"
            )
    out.append("")
    out.append(
        "Runs alternate (egctl first on odd-numbered runs, gatewright first on even), "
        "every run timed. Wall: spawn to exit, stdout to a file. CPU: the child's user + "
        "system time. Peak RSS: the child's ru_maxrss. Ratios: egctl's median / "
        "gatewright's. Both validate every document against the Gateway API CRD schemas "
        "and CEL rules (egctl always; gatewright by default, run without "
        "--skip-schema-validation); gatewright also prints the objects' statuses, egctl "
        "(--to xds) does not."
    )
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--egctl", required=True)
    parser.add_argument("--gatewright", required=True)
    parser.add_argument("--sizes", default="100,750,5000")
    parser.add_argument("--runs", type=int, default=7, help="runs of each tool per size, at most")
    parser.add_argument("--min-runs", type=int, default=3,
                        help="runs of each tool per size, at least, whatever the budget")
    parser.add_argument("--size-budget", type=float, default=1800.0,
                        help="seconds per size after which no further run starts (once --min-runs ran)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    parser.add_argument("--markdown", default=None, help="also write the report here")
    args = parser.parse_args()
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be between 1 and {MAX_RUNS}")
    if not 1 <= args.min_runs <= args.runs:
        parser.error("--min-runs must be between 1 and --runs")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s < 1 for s in sizes):
        parser.error("--sizes: positive numbers of HTTPRoutes, comma-separated")
    egctl = os.path.abspath(args.egctl)
    gatewright = os.path.abspath(args.gatewright)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-peers-"))
    workdir.mkdir(parents=True, exist_ok=True)

    egctl_version = subprocess.run(
        ["go", "version", "-m", egctl], capture_output=True, text=True, check=False
    ).stdout
    egctl_module = next(
        (
            line.split()[2]
            for line in egctl_version.splitlines()
            if line.strip().startswith("mod") and "envoyproxy/gateway" in line
        ),
        "unknown",
    )
    header = machine() + [
        f"egctl: Envoy Gateway {egctl_module} ({egctl})",
        f"gatewright: {gatewright}",
        f"controllerName: {generate.CONTROLLER_NAME} (gatewright --controller-name)",
        "",
    ]
    print("\n".join(header), flush=True)

    report: list[str] = list(header)
    rows = []
    for size in sizes:
        input_path = workdir / f"routes-{size}.yaml"
        input_path.write_text(generate.generate(size), encoding="utf-8")
        commands = {
            "egctl": [egctl, "x", "translate", "--from", "gateway-api", "--to", "xds",
                      "-f", str(input_path)],
            "gatewright": [gatewright, "translate", "-f", str(input_path),
                           "--controller-name", generate.CONTROLLER_NAME],
        }

        samples: dict[str, list[Sample]] = {"egctl": [], "gatewright": []}
        size_start = time.monotonic()
        for run in range(args.runs):
            order = ["egctl", "gatewright"] if run % 2 == 0 else ["gatewright", "egctl"]
            for name in order:
                out, err = workdir / f"{name}-{size}.out", workdir / f"{name}-{size}.err"
                code, sample = run_once(commands[name], out, err, args.timeout)
                if code != 0:
                    sys.stderr.write(err.read_text(errors="replace")[-4000:])
                    raise SystemExit(
                        f"error: {name} exited {code} on run {run + 1} at {size} HTTPRoutes: "
                        + " ".join(commands[name])
                    )
                samples[name].append(sample)
            eg, gw = samples["egctl"][-1], samples["gatewright"][-1]
            print(
                f"  run {run + 1}/{args.runs}: egctl {eg.wall:.3f} s wall, {eg.cpu:.2f} s CPU, "
                f"{fmt_mib(eg.max_rss_kib)}; gatewright {gw.wall:.3f} s wall, {gw.cpu:.2f} s CPU, "
                f"{fmt_mib(gw.max_rss_kib)} (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            if run == 0:
                # The first run's outputs are the ones compared (every run
                # is timed; the tools are deterministic).
                lines = compare(
                    size,
                    egctl_counts((workdir / f"egctl-{size}.out").read_text(encoding="utf-8")),
                    gatewright_counts(
                        (workdir / f"gatewright-{size}.out").read_text(encoding="utf-8")
                    ),
                )
                print("\n".join(lines), flush=True)
                report.extend(lines)
            spent = time.monotonic() - size_start
            if run + 1 >= args.min_runs and run + 1 < args.runs and spent > args.size_budget:
                print(
                    f"  stopping after {run + 1} runs: {spent:.0f} s spent at this size "
                    f"(--size-budget {args.size_budget:.0f} s)",
                    flush=True,
                )
                break
        rows.append((size, samples["egctl"], samples["gatewright"]))
        report.append("")
        # The table so far, after every size: a long run stopped part way
        # still leaves the sizes it finished.
        print("\n" + "\n".join(table(rows)[:-2]) + "\n", flush=True)
        if args.markdown:
            Path(args.markdown).write_text(
                "\n".join(report + table(rows)) + "\n", encoding="utf-8"
            )

    load = os.getloadavg()
    result = table(rows) + [
        "",
        f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]
    print("\n".join(result), flush=True)
    report.extend(result)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(report) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
