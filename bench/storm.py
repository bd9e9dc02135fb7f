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
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

import harness as h
from grants import client, merge, percentile

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

    lat, statuses = merge(results)
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
