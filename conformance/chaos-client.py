#!/usr/bin/env python3
"""Traffic and bookkeeping for conformance/chaos.sh (`make chaos-k8s`).

Every command works on one folder DIR shared with the script:

  DIR/phase        the phase now running (one word), written by the script
  DIR/phases       "<name> <start unix time>" per phase, appended by the script
  DIR/expect.json  per route path, what a response may be (see `expect`)
  DIR/stop         made by the script: the clients stop
  DIR/records      one JSON line per request (written by `run`)

  run DIR --addr A ...   concurrent clients on both listeners until DIR/stop
                         exists or a bound is reached; every response recorded
  expect DIR PATH k=v..  sets what PATH may answer: codes=200,404
                         backends=echo-a,echo-b resp=v1,v2 req=v1 (header
                         values; "-" means the header is absent)
  settle DIR PATH k=v.. --ips IP,IP
                         polls every Envoy pod (by pod IP, both listeners)
                         until each answers as k=v.. asks several times in a
                         row, then makes it the expectation of PATH
  summary DIR --conn-ok PHASE,..
                         one line per phase; exits 1 on anything not asked for

A response is right when its code is among the route's codes and, for a
200, the echo pod that answered belongs to one of its backends and the
headers x-chaos-resp (on the response) and x-chaos-req (the request as the
echo pod saw it) have allowed values. A request is checked against the
expectation when it started and the one when it ended (a change widens the
expectation before it is applied and narrows it once it is served), and is
attributed to the phase it started in. No request is retried: an error with
no response is a connection failure (code 000), whatever its kind.
"""

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time

ROUTES = ["/steady", "/filter", "/split", "/churn"]
RESP_HEADER = "x-chaos-resp"
REQ_HEADER = "X-Chaos-Req"  # as echo-basic reports request headers
HOST = "gw.chaos.test"
TIMEOUT_S = 3.0


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


class Expectations:
    """expect.json, re-read whenever it changes."""

    def __init__(self, folder):
        self.path = os.path.join(folder, "expect.json")
        self.stamp = None
        self.value = {}
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            try:
                stamp = os.stat(self.path).st_mtime_ns
            except FileNotFoundError:
                return self.value
            if stamp != self.stamp:
                with open(self.path) as f:
                    self.value = json.load(f)
                self.stamp = stamp
            return self.value


def backend_of(pod):
    """echo-a-5d8f7c9b4-xk2lp -> echo-a (the Deployment's name)."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


def observe(status, resp_headers, body):
    """What a response shows: code, backend, the two header values."""
    backend, req = "", "-"
    if status == 200:
        try:
            echo = json.loads(body)
            backend = backend_of(echo.get("pod", ""))
            values = echo.get("headers", {}).get(REQ_HEADER, [])
            req = ",".join(values) if values else "-"
        except ValueError:
            backend = "?unparsable"
    resp = resp_headers.get(RESP_HEADER) or "-"
    return {"c": status, "b": backend, "resp": resp, "req": req}


def verdict(obs, exp):
    """'ok', 'code' (a code not asked for) or 'wrong' (a 200 from the wrong
    backend or with wrong headers)."""
    if exp is None:
        return "code"
    if obs["c"] not in exp["codes"]:
        return "code"
    if obs["c"] != 200:
        return "ok"
    if obs["b"] not in exp["backends"]:
        return "wrong"
    if obs["resp"] not in exp["resp"] or obs["req"] not in exp["req"]:
        return "wrong"
    return "ok"


def request(conn, path):
    conn.request("GET", path, headers={"Host": HOST})
    r = conn.getresponse()
    body = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


class TLSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with the Gateway's host name as SNI and for
    certificate verification."""

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=HOST)


def connection(listener, addr, port, ctx):
    if listener == "https":
        return TLSConnection(addr, port, timeout=TIMEOUT_S, context=ctx)
    return http.client.HTTPConnection(addr, port, timeout=TIMEOUT_S)


def error_kind(e):
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    # RemoteDisconnected is a ConnectionResetError: the connection closed
    # before a response (a keep-alive connection whose Envoy went away).
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return "tls"
    return type(e).__name__


def cmd_run(a):
    ctx = ssl.create_default_context(cafile=a.ca)
    expectations = Expectations(a.dir)
    out = open(os.path.join(a.dir, "records"), "a", buffering=1)
    out_lock = threading.Lock()
    stop_file = os.path.join(a.dir, "stop")
    phase_file = os.path.join(a.dir, "phase")
    end = time.monotonic() + a.max_seconds
    budget = [a.max_requests]
    budget_lock = threading.Lock()
    bounded = threading.Event()

    def client(name, listener, port, keep_alive):
        conn = None
        i = 0
        while not os.path.exists(stop_file):
            with budget_lock:
                if budget[0] <= 0 or time.monotonic() >= end:
                    bounded.set()
                    break
                budget[0] -= 1
            path = ROUTES[i % len(ROUTES)] + "/" + name
            i += 1
            phase = read(phase_file, "none")
            before = expectations.get().get(ROUTES[(i - 1) % len(ROUTES)])
            if conn is None:
                conn = connection(listener, a.addr, port, ctx)
            fresh = conn.sock is None
            rec = {"ph": phase, "th": name, "p": path, "fresh": fresh}
            try:
                status, headers, body = request(conn, path)
                obs = observe(status, headers, body)
                rec.update(obs)
                after = expectations.get().get(ROUTES[(i - 1) % len(ROUTES)])
                v1, v2 = verdict(obs, before), verdict(obs, after)
                rec["v"] = "ok" if "ok" in (v1, v2) else v1
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                rec.update({"c": 0, "v": "conn", "e": error_kind(e), "msg": str(e)[:120]})
                conn.close()
                conn = None
            if not keep_alive and conn is not None:
                conn.close()
                conn = None
            rec["t"] = round(time.time(), 3)
            with out_lock:
                out.write(json.dumps(rec) + "\n")
            time.sleep(a.pause)
        if conn is not None:
            conn.close()

    threads = []
    for listener, port in (("http", a.http_port), ("https", a.https_port)):
        for n in range(a.keep_alive):
            threads.append((f"{listener}-ka{n}", listener, port, True))
        for n in range(a.new_conn):
            threads.append((f"{listener}-nc{n}", listener, port, False))
    running = [threading.Thread(target=client, args=t, daemon=True) for t in threads]
    for t in running:
        t.start()
    for t in running:
        t.join()
    out.close()
    if bounded.is_set() and not os.path.exists(stop_file):
        open(os.path.join(a.dir, "bounded"), "w").close()
    return 0


def parse_expectation(pairs, base):
    exp = dict(base or {"codes": [200], "backends": [], "resp": ["-"], "req": ["-"]})
    for pair in pairs:
        key, _, value = pair.partition("=")
        values = [v for v in value.split(",") if v]
        if key == "codes":
            exp["codes"] = [int(v) for v in values]
        elif key in ("backends", "resp", "req"):
            exp[key] = values
        else:
            raise SystemExit(f"unknown expectation {pair}")
    return exp


def write_expectation(folder, path, exp):
    file = os.path.join(folder, "expect.json")
    current = json.loads(read(file, "{}"))
    current[path] = exp
    tmp = file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(current, f, sort_keys=True)
    os.replace(tmp, file)  # the clients never see half a file


def cmd_expect(a):
    current = json.loads(read(os.path.join(a.dir, "expect.json"), "{}"))
    write_expectation(a.dir, a.path, parse_expectation(a.pairs, current.get(a.path)))
    return 0


def cmd_settle(a):
    current = json.loads(read(os.path.join(a.dir, "expect.json"), "{}"))
    exp = parse_expectation(a.pairs, current.get(a.path))
    need = set(v for v in a.need_backends.split(",") if v)
    ctx = ssl.create_default_context(cafile=a.ca)
    targets = [(ip, l, p) for ip in a.ips.split(",") if ip for l, p in (("http", 80), ("https", 443))]
    deadline = time.monotonic() + a.timeout
    last = {}
    for target in targets:
        ip, listener, port = target
        run, seen = 0, set()
        while run < a.in_a_row or not need <= seen:
            if time.monotonic() >= deadline:
                print(f"settle {a.path}: {ip}:{port} ({listener}) not serving {exp} "
                      f"(need backends {sorted(need)}) within {a.timeout} s; last: {last}", file=sys.stderr)
                return 1
            conn = connection(listener, ip, port, ctx)
            try:
                obs = observe(*request(conn, a.path + "/settle"))
            except Exception as e:  # noqa: BLE001
                obs = {"c": 0, "e": error_kind(e)}
            finally:
                conn.close()
            last = obs
            if obs.get("c") and verdict(obs, exp) == "ok":
                run += 1
                seen.add(obs["b"])
            else:
                run, seen = 0, set()
                time.sleep(0.2)
    write_expectation(a.dir, a.path, exp)
    return 0


def cmd_summary(a):
    phases = []
    for line in read(os.path.join(a.dir, "phases")).splitlines():
        name, start = line.split()
        phases.append((name, float(start)))
    stats = {name: {"n": 0, "2xx": 0, "asked": {}, "codes": {}, "conn": {}, "wrong": 0}
             for name, _ in phases}
    examples = {}
    with open(os.path.join(a.dir, "records")) as f:
        for line in f:
            r = json.loads(line)
            s = stats.setdefault(r["ph"], {"n": 0, "2xx": 0, "asked": {}, "codes": {}, "conn": {}, "wrong": 0})
            s["n"] += 1
            c = r["c"]
            if r["v"] == "conn":
                s["conn"][r["e"]] = s["conn"].get(r["e"], 0) + 1
            elif 200 <= c < 300:
                s["2xx"] += 1
                if r["v"] == "wrong":
                    s["wrong"] += 1
            elif r["v"] == "ok":
                s["asked"][c] = s["asked"].get(c, 0) + 1
            else:
                s["codes"][c] = s["codes"].get(c, 0) + 1
            if r["v"] != "ok":
                examples.setdefault(r["ph"], []).append(r)
    conn_ok = set(a.conn_ok.split(","))
    ends = [start for _, start in phases[1:]] + [float(read(os.path.join(a.dir, "ended"), "0")) or time.time()]
    rows = [(name, end - start, True) for (name, start), end in zip(phases, ends)]
    # Records of a phase the script never started (none, normally) are
    # shown and judged too, never dropped.
    rows += [(name, None, False) for name in stats if name not in dict(phases)]
    failed = False
    fmt = lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) + "}"
    for name, seconds, known in rows:
        s = stats[name]
        conn = sum(s["conn"].values())
        bad = sum(s["codes"].values()) + s["wrong"] + (0 if name in conn_ok else conn)
        bad_phase = bad > 0 or (known and s["n"] < a.min_requests)
        failed |= bad_phase
        took = f"{seconds:.1f} s" if seconds is not None else "? s (no such phase)"
        print(f"CHAOS {name or '(none)'}: {s['n']} requests in {took}, {s['2xx']} 2xx, "
              f"non-2xx asked for {fmt(s['asked'])}, non-2xx not asked for {fmt(s['codes'])}, "
              f"connection failures (000) {conn} {fmt(s['conn'])}{' (expected here)' if name in conn_ok and conn else ''}, "
              f"wrong backend/headers {s['wrong']}: {'FAILED' if bad_phase else 'ok'}")
    for name, bad_rows in examples.items():
        if name in conn_ok and all(r["v"] == "conn" for r in bad_rows):
            continue
        for r in bad_rows[:5]:
            print(f"  {name} example: {json.dumps(r)}", file=sys.stderr)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--addr", required=True)
    r.add_argument("--ca", required=True)
    r.add_argument("--http-port", type=int, default=80)
    r.add_argument("--https-port", type=int, default=443)
    r.add_argument("--keep-alive", type=int, default=2, help="keep-alive clients per listener")
    r.add_argument("--new-conn", type=int, default=1, help="one-connection-per-request clients per listener")
    r.add_argument("--pause", type=float, default=0.05, help="seconds between a client's requests")
    r.add_argument("--max-seconds", type=float, required=True)
    r.add_argument("--max-requests", type=int, required=True)
    e = sub.add_parser("expect")
    e.add_argument("dir")
    e.add_argument("path")
    e.add_argument("pairs", nargs="*")
    s = sub.add_parser("settle")
    s.add_argument("dir")
    s.add_argument("path")
    s.add_argument("pairs", nargs="*")
    s.add_argument("--ips", required=True)
    s.add_argument("--ca", required=True)
    s.add_argument("--need-backends", default="")
    s.add_argument("--in-a-row", type=int, default=8)
    s.add_argument("--timeout", type=float, default=90)
    m = sub.add_parser("summary")
    m.add_argument("dir")
    m.add_argument("--conn-ok", default="")
    m.add_argument("--min-requests", type=int, default=20)
    a = p.parse_args()
    return {"run": cmd_run, "expect": cmd_expect, "settle": cmd_settle, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
