#!/usr/bin/env python3
"""Soak: mixed load on a release sidecar + example upstream for a bounded
time (default 10 minutes), loopback only. Token requests, proxied calls and
direct protected calls run at once, in rounds of up to 60 s (each round
fetches a fresh token for the direct calls: tokens live 5 minutes). Reports
errors (must be 0) and sidecar RSS after the first round and at the end
(must be flat within 10%). Exit status 1 when either fails.

    python3 bench/soak.py [--minutes 10]
"""
import argparse
import datetime
import os
import sys
import threading
import time

import harness as h

p = argparse.ArgumentParser()
p.add_argument("--minutes", type=float, default=10.0)
p.add_argument("--out", default=os.path.join(h.BENCH, "SOAK.md"))
args = p.parse_args()
total = max(10, int(args.minutes * 60))

h.build()
st = h.Stack()
pid = st.sidecar.pid
loads = {
    "token endpoint": (st.sidecar_url + "/oauth2/token", "token.lua", None),
    "proxied /api/environment": (st.sidecar_url + "/api/environment", "get.lua", None),
    "direct protected /environment": (st.api_url + "/environment", "get.lua", "TOKEN"),
}
sums = {k: dict(requests=0, errors=0, non2xx=0) for k in loads}
rss_start = None
started = time.time()
rounds = 0
try:
    while (left := total - (time.time() - started)) > 1:
        secs = int(min(60, left))
        token = st.token()
        threads, results = [], {}
        for name, (url, script, env_key) in loads.items():
            env = {env_key: token} if env_key else None

            def run(name=name, url=url, script=script, env=env):
                results[name] = h.wrk(url, script, 4, secs, threads=1, env=env)
            t = threading.Thread(target=run)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        for name, r in results.items():
            for k in sums[name]:
                sums[name][k] += r[k]
        rounds += 1
        if rss_start is None:
            rss_start = h.rss_mib(pid)
        print(f"round {rounds}: {secs}s, sidecar RSS {h.rss_mib(pid):.1f} MiB, "
              + ", ".join(f"{n}: {results[n]['requests']} req" for n in loads), flush=True)
finally:
    rss_end = h.rss_mib(pid)
    peak = h.peak_mib(pid)
    st.stop()

errors = sum(s["errors"] + s["non2xx"] for s in sums.values())
growth = (rss_end - rss_start) / rss_start if rss_start else 0.0
ok = errors == 0 and abs(growth) <= 0.10
lines = "\n".join(f"| {n} | {s['requests']:,} | {s['errors']} | {s['non2xx']} |" for n, s in sums.items())
report = f"""# authproxy soak

`python3 bench/soak.py --minutes {args.minutes:g}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, on {h.machine()}: {rounds} rounds, {total} s of mixed load (wrk, 4 connections per load, loopback).

| load | requests | socket errors | non-2xx |
|---|---|---|---|
{lines}

Sidecar RSS after the first round {rss_start:.1f} MiB, at the end {rss_end:.1f} MiB ({growth:+.1%}; must stay within ±10%), peak {peak:.1f} MiB.
Result: **{'pass' if ok else 'FAIL'}** ({errors} errors).
"""
with open(args.out, "w") as f:
    f.write(report)
print(report)
sys.exit(0 if ok else 1)
