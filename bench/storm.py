#!/usr/bin/env python3
"""The renewal storm (issue #12): one issuer, 200 synced workloads, and 200
sidecars' worth of POST /v1/grants — each with its own workload credential and
a fresh Ed25519 public key — from N concurrent keep-alive clients for a few
seconds. Reports grants/s and latency percentiles; writes bench/STORM.md.
Loopback only. Needs the `cryptography` package for the keys.

    python3 bench/storm.py [CLIENTS] [SECONDS]     (default 16 clients, 10 s)

Uses target/release/authproxy (built here unless AUTHPROXY_BIN names
another binary; the report says which one ran).
"""
import base64
import http.client
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import harness as h

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
WORKLOADS = 200


def declarations():
    lines = ["tasks:"]
    for i in range(WORKLOADS):
        lines.append(f"  storm-{i:03d}:")
        lines.append("    authorizations:")
        lines.append("      - { type: env, action: view }")
    return "\n".join(lines) + "\n"


def fresh_jwk():
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def client(args):
    """One keep-alive client cycling through its share of the sidecars until
    `stop`; returns (latencies in ms, statuses)."""
    port, sidecars, start, stop = args
    while time.time() < start:
        time.sleep(0.001)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    lat, statuses, i = [], {}, 0
    while time.time() < stop:
        workload, credential = sidecars[i % len(sidecars)]
        i += 1
        body = json.dumps({"workload": workload, "environment": "main",
                           "public_key": fresh_jwk()})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/grants", body=body,
                         headers={"authorization": f"Bearer {credential}",
                                  "content-type": "application/json"})
            r = conn.getresponse()
            r.read()
            code = r.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            code = "error"
        lat.append((time.perf_counter() - t0) * 1000)
        statuses[code] = statuses.get(code, 0) + 1
    return lat, statuses


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    binary = os.environ.get("AUTHPROXY_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "authproxy"],
                       cwd=h.ROOT, check=True)
        binary = h.AUTHPROXY
    d = tempfile.mkdtemp(prefix="authproxy-storm-")
    port = h.free_port()
    url = f"http://127.0.0.1:{port}"
    with open(f"{d}/issuer.toml", "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[issuer]\nurl = "{url}"\n'
                f'state_dir = "{d}/issuer"\n')
    with open(f"{d}/project.yaml", "w") as f:
        f.write(declarations())
    issuer = subprocess.Popen([binary, "issuer", "serve", "--config", f"{d}/issuer.toml"],
                              env=dict(os.environ, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
    try:
        h.wait_http(f"{url}/.well-known/jwks.json")
        subprocess.run([binary, "issuer", "sync", "--declarations", f"{d}/project.yaml",
                        "--environment", "main", "--issuer", url, "--admin-token-file",
                        f"{d}/issuer/admin-token", "--credentials-dir", f"{d}/credentials"],
                       check=True, stdout=subprocess.DEVNULL)
        sidecars = []
        for i in range(WORKLOADS):
            with open(f"{d}/credentials/task_storm-{i:03d}") as f:
                sidecars.append((f"task/storm-{i:03d}", f.read().strip()))
        start = time.time() + 1.0
        stop = start + SECONDS
        shares = [(port, sidecars[k::CLIENTS], start, stop) for k in range(CLIENTS)]
        with mp.Pool(CLIENTS) as pool:
            results = pool.map(client, shares)
        cpu = h.cpu_seconds(issuer.pid)
        rss = h.peak_mib(issuer.pid)
    finally:
        issuer.terminate()
        issuer.wait()

    lat = [x for r in results for x in r[0]]
    statuses = {}
    for _, s in results:
        for k, v in s.items():
            statuses[k] = statuses.get(k, 0) + v
    ok = statuses.get(200, 0)
    profile = "release" if os.sep + "release" + os.sep in binary else "debug"
    lines = [
        "# Renewal storm (bench/storm.py)",
        "",
        f"One issuer (`{profile}` build, SQLite store, loopback), {WORKLOADS} workloads synced; "
        f"{CLIENTS} keep-alive clients (one process each) cycle through the {WORKLOADS} "
        f"sidecars' credentials for {SECONDS:.0f} s, each request `POST /v1/grants` with that "
        "workload's `ap_wc_…` credential and a fresh Ed25519 public key (generated outside "
        "the timed span).",
        "",
        f"Machine: {h.machine()}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| grants issued (200) | {ok} of {len(lat)} requests; statuses {statuses} |",
        f"| grants/s | {ok / SECONDS:.0f} |",
        f"| latency p50 / p90 / p99 / max | {percentile(lat, 50):.2f} / {percentile(lat, 90):.2f}"
        f" / {percentile(lat, 99):.2f} / {max(lat):.2f} ms |",
        f"| latency mean | {statistics.mean(lat):.2f} ms |",
        f"| issuer CPU (whole run, sync included) | {cpu:.2f} s |",
        f"| issuer peak RSS | {rss:.1f} MiB |",
        "",
        f"Each grant is one credential-hash lookup, one Ed25519 signature and one logged "
        f"issuance; {WORKLOADS} sidecars renewing at 45–55 % of a 24 h grant need about "
        f"{WORKLOADS / (0.45 * 86400):.4f} grants/s, and even all {WORKLOADS} restarting at "
        f"once take {WORKLOADS / max(ok / SECONDS, 1):.2f} s at this rate.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(h.BENCH, "STORM.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
