#!/usr/bin/env python3
"""`authproxy verifier` under load (issue #16), in one run, against baselines
measured in the same run: req/s of `GET /verify` with a cached token as a
ratio to the sidecar's `/healthz` and to the verifier's own `/healthz`, and
the verifier's cost per check against the layer's (the example upstream's
protected route, which verifies the same token in process).

Release binaries on loopback, wrk bounded in time; writes bench/VERIFIER.md.
Build first (and hold the shared build lock while measuring, so that no
compile shares the cores):

    cargo build --release -p authproxy --examples --bins
    python3 bench/verifier.py [--seconds 4] [--rounds 3]
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import time

import harness as h

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=4)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--connections", type=int, default=16)
p.add_argument("--out", default=os.path.join(h.BENCH, "VERIFIER.md"))
args = p.parse_args()
S, R, C = args.seconds, args.rounds, args.connections

# The release binaries where cargo put them (its target directory may be
# set by CARGO_TARGET_DIR, a config file or a wrapper).
meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                      cwd=h.ROOT, check=True, capture_output=True, text=True).stdout
h.REL = os.path.join(json.loads(meta)["target_directory"], "release")
h.AUTHPROXY = os.path.join(h.REL, "authproxy")
h.UPSTREAM = os.path.join(h.REL, "examples", "environment_api")
for binary in (h.AUTHPROXY, h.UPSTREAM):
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} is missing: cargo build --release -p authproxy --examples --bins")

rows = []


def row(name, r, ratio=None):
    shown = f"{ratio:.2f}" if ratio is not None else "—"
    rows.append(f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {shown} | {r['errors'] + r['non2xx']} |")


def median_run(runs):
    m = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
    m["errors"] = sum(r["errors"] for r in runs)
    m["non2xx"] = sum(r["non2xx"] for r in runs)
    return m


def compare(base_name, base, subj_name, subj):
    """Alternates baseline and subject R times; the median of the per-round
    ratios (subject req/s ÷ baseline req/s)."""
    b_runs, s_runs, ratios = [], [], []
    for _ in range(R):
        b, s_ = base(), subj()
        b_runs.append(b)
        s_runs.append(s_)
        ratios.append(s_["rps"] / b["rps"])
    ratio = statistics.median(ratios)
    row(base_name, median_run(b_runs))
    row(subj_name, median_run(s_runs), ratio)
    return ratio


st = h.Stack()
verifier_port = h.free_port()
verifier_url = f"http://127.0.0.1:{verifier_port}"
verifier = subprocess.Popen(
    [h.AUTHPROXY, "verifier", "serve", "--config", "config/verifier.toml", "--log-format", "json"],
    cwd=h.ROOT, stderr=subprocess.DEVNULL,
    # The production default log level, as for the sidecar.
    env=dict(os.environ, RUST_LOG="info",
             AUTHPROXY__SERVER__LISTEN=f"127.0.0.1:{verifier_port}",
             AUTHPROXY__TRUST__ISSUERS=st.sidecar_url,
             AUTHPROXY__TRUST__AUDIENCE=st.api_url))
try:
    h.wait_http(verifier_url + "/healthz")
    token = st.token()
    tok = {"TOKEN": token}
    # Every run below sends the same headers (a 1.4 KiB token and the two
    # X-Original-* headers); only the path differs.
    def run(url):
        return lambda: h.wrk(url, "verify.lua", C, S, env=tok)

    first = h.wrk(verifier_url + "/verify", "verify.lua", 1, 1, env=tok)
    assert first["non2xx"] == 0 and first["errors"] == 0, f"/verify refused the token: {first}"

    sidecar_ratio = compare(
        f"sidecar `GET /healthz`, {C} conn", run(st.sidecar_url + "/healthz"),
        f"verifier `GET /verify`, cached token, {C} conn", run(verifier_url + "/verify"))
    own_ratio = compare(
        f"verifier `GET /healthz`, {C} conn", run(verifier_url + "/healthz"),
        f"verifier `GET /verify`, cached token, {C} conn", run(verifier_url + "/verify"))
    layer_ratio = compare(
        f"upstream `GET /environment` (the layer, in process), {C} conn", run(st.api_url + "/environment"),
        f"verifier `GET /verify` for `GET /environment`, {C} conn", run(verifier_url + "/verify"))
    open_ratio = compare(
        f"upstream `GET /healthz` (open), {C} conn", run(st.api_url + "/healthz"),
        f"upstream `GET /environment` (the layer), {C} conn", run(st.api_url + "/environment"))

    # CPU per request, per process, over one run each.
    procs = {"verifier": verifier, "upstream": st.api, "sidecar": st.sidecar}

    def cpu_per_request(url):
        c0 = {n: h.cpu_seconds(p.pid) for n, p in procs.items()}
        r = h.wrk(url, "verify.lua", C, S, env=tok)
        return {n: (h.cpu_seconds(p.pid) - c0[n]) / r["requests"] * 1e6 for n, p in procs.items()}

    cpu_verify = cpu_per_request(verifier_url + "/verify")["verifier"]
    cpu_verifier_health = cpu_per_request(verifier_url + "/healthz")["verifier"]
    cpu_layer = cpu_per_request(st.api_url + "/environment")["upstream"]
    cpu_open = cpu_per_request(st.api_url + "/healthz")["upstream"]
    cpu_sidecar_health = cpu_per_request(st.sidecar_url + "/healthz")["sidecar"]
    rss = h.rss_mib(verifier.pid)
finally:
    verifier.terminate()
    verifier.wait(timeout=15)
    st.stop()

rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=h.ROOT, capture_output=True, text=True).stdout.strip()
report = f"""# `authproxy verifier` benchmark

Produced by `python3 bench/verifier.py --seconds {S} --rounds {R} --connections {C}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit `{rev or 'uncommitted'}`, on {h.machine()}, release build, with the shared build lock held (no compile running).
wrk (2 threads) on the same machine, loopback only, each run {S} s, {C} connections; every request carries the same headers (a sidecar token, `X-Original-Method: GET`, `X-Original-URI: /environment`), only the path differs. Each comparison alternates baseline and subject {R} times; "ratio" is the median of the per-round ratios (subject req/s ÷ the baseline in the row above), because absolute figures on a shared 2-core machine swing by ±30 % between identical runs.

The sidecar runs a single-threaded runtime (one core at most); the verifier and the example upstream run multi-threaded runtimes (both cores, shared with wrk).

## Ratios

| what | ratio |
|---|---|
| verifier `/verify` (cached token) ÷ sidecar `/healthz` | **{sidecar_ratio:.2f}** |
| verifier `/verify` (cached token) ÷ verifier `/healthz` | {own_ratio:.2f} |
| verifier `/verify` ÷ the layer in process (upstream `GET /environment`, same token) | {layer_ratio:.2f} |
| (for reference) the layer's protected route ÷ the upstream's open route | {open_ratio:.2f} |

## Throughput and latency

| run | req/s | p50 ms | p99 ms | ratio | errors |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## CPU per request (µs, one run each)

| request | process | CPU µs |
|---|---|---|
| verifier `GET /verify`, cached token | verifier | {cpu_verify:.0f} |
| verifier `GET /healthz` | verifier | {cpu_verifier_health:.0f} |
| upstream `GET /environment` (the layer verifies in process) | upstream | {cpu_layer:.0f} |
| upstream `GET /healthz` (open) | upstream | {cpu_open:.0f} |
| sidecar `GET /healthz` | sidecar | {cpu_sidecar_health:.0f} |

A check costs the verifier {cpu_verify - cpu_verifier_health:+.0f} µs over its own `/healthz` (the layer's decision for a cached token, route matching and path checks); the layer costs the upstream {cpu_layer - cpu_open:+.0f} µs over its open route. What a non-Rust upstream pays on top is the proxy's second HTTP exchange (the auth subrequest), one `/healthz`-sized exchange: ~{cpu_verifier_health:.0f} µs of verifier CPU per request plus the proxy's side. Verifier RSS after the load: {rss:.1f} MiB.
"""
with open(args.out, "w") as f:
    f.write(report)
print(report)
